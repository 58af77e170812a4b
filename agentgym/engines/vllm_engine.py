"""The GPU engine: vLLM behind the :class:`~agentgym.engines.Engine` interface.

Install with ``pip install 'agentgym[vllm]'``; it needs a CUDA GPU. On a CPU use
:class:`~agentgym.engines.TransformersEngine`.

- Token ids in, token ids and per-token logprobs out. vLLM is started with ``logprobs_mode="processed_logprobs"``,
  so the logprob of a sampled token is taken after temperature and after top-k / top-p, renormalized over what
  they keep: the engine contract's logprob of the distribution sampled from, which the trainer computes the same
  way (:func:`agentgym.policy.forward` with the run's ``top_k`` / ``top_p``).
- Multi-turn reuse comes from vLLM's automatic prefix caching, so ``cache_keys`` need no bookkeeping here and
  ``release`` does nothing.
- ``load_weights(state_dict)`` loads the trainer's weights into the model vLLM runs in-process, then resets the prefix
  cache (keys/values computed with the old weights are stale). The engine sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
  before vLLM starts so that the model lives in this process.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from agentgym.engines.base import Completion, Engine, SamplingParams


class VLLMUnavailableError(RuntimeError):
    """vLLM is not installed, or there is no CUDA GPU for it."""


def require_vllm() -> Any:
    """Import vLLM, or explain what is missing (the package or a GPU) and what to use instead."""
    _check_available()
    import vllm

    return vllm


def _check_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailableError(
            "VLLMEngine needs the vllm package and a CUDA GPU: pip install 'agentgym[vllm]'. "
            "Without a GPU use agentgym.engines.TransformersEngine."
        )
    if not torch.cuda.is_available():
        raise VLLMUnavailableError(
            "VLLMEngine needs a CUDA GPU and torch.cuda.is_available() is False. "
            "On a CPU use agentgym.engines.TransformersEngine."
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
    """vLLM on one CUDA GPU, with the same interface as the CPU engine.

    Args:
        model: a model directory, a hub id, or ``"SmolLM2-135M-Instruct"`` (the converted embedded default).
        dtype: vLLM's dtype (``"auto"``, ``"float32"``, ``"bfloat16"``...). Use ``"float32"`` for logprobs that
            match an fp32 trainer closely.
        gpu_memory_utilization: share of the GPU vLLM may take (leave room for the trainer when colocated).
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
        self._vllm = vllm
        llm_kwargs.setdefault("enable_prefix_caching", True)
        try:
            self.llm = vllm.LLM(
                model=path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                logprobs_mode="processed_logprobs", **llm_kwargs,
            )
        except TypeError as exc:
            if "logprobs_mode" in str(exc):
                raise VLLMUnavailableError(
                    f"This vllm ({getattr(vllm, '__version__', '?')}) has no logprobs_mode; agentgym needs "
                    "vllm>=0.10.2 for logprobs taken after temperature."
                ) from exc
            raise
        self._tokenizer = self.llm.get_tokenizer()

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
        sp = self._vllm.SamplingParams(**vllm_sampling_kwargs(params))
        inputs = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        if not inputs:
            return []
        outputs = self.llm.generate(inputs, sp, use_tqdm=False)
        return [[completion_from_vllm(o) for o in out.outputs] for out in outputs]

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        model = _runner_model(self.llm)
        model.load_weights(weights=((k, v) for k, v in state_dict.items()))
        self.llm.reset_prefix_cache()


def _runner_model(llm: Any) -> Any:
    """The ``nn.Module`` vLLM runs, found along the attribute paths of the engine versions agentgym supports."""
    executor = llm.llm_engine.model_executor
    worker = getattr(executor, "driver_worker", None)
    for path in (("worker", "model_runner", "model"), ("model_runner", "model")):
        obj = worker
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None and hasattr(obj, "load_weights"):
            return obj
    raise RuntimeError(
        "Could not reach the model inside vLLM to load weights; run vLLM in-process "
        "(VLLM_ENABLE_V1_MULTIPROCESSING=0, set before vllm is imported) with one GPU."
    )
