"""The default engine: batched sampling with a transformers causal LM, in-process, on CPU or one GPU.

It shares the trainer's ``nn.Module``: there is no weight copy, so after an optimizer step the next ``generate``
already samples from the new policy (the engine notices changed parameters and drops the contexts it kept).

How a ``generate`` call runs:

1. **Reuse.** A prompt whose ``cache_key`` names a kept context reuses the keys and values of the longest common
   prefix of the two (all but the last prompt token at most) and prefills only the rest.
2. **Layout.** Rows live in one preallocated key/value cache ``[layers, rows, kv_heads, columns, head_dim]``.
   Reused prefixes are right-aligned in the first ``C`` columns, the new tokens right-aligned in the next ``W``
   columns, and decoding appends one column per step for all rows. Gaps are masked; rotary positions are each
   row's true token positions, so the layout never changes the numbers, only where they are stored.
3. **Prefill** runs in groups of rows of similar new length (and in column chunks for long inputs), computing the
   LM head only at the last position.
4. **Decode** samples with a ``torch.Generator`` seeded per request, stops a row at a stop token, stop string or
   its length limit, shrinks the cache to the running rows once half of them have finished, and stops when all
   have finished.

Llama-family models (``llama``, ``mistral``, ``qwen2``, ``qwen3`` without sliding windows) run through a compact
forward written against their weights, which skips the per-call overhead of the generic module stack; any other
causal LM runs through its own ``forward`` with the same cache layout.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agentgym.engines.base import Completion, Engine, SamplingParams, keep_sorted

_FAST_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


# --------------------------------------------------------------------------------------------------------------------
# Key/value storage


class _KVCache:
    """Preallocated keys and values for a set of rows: ``[layers, rows, kv_heads, columns, head_dim]``."""

    def __init__(self, layers: int, rows: int, kv_heads: int, columns: int, head_dim: int, dtype, device) -> None:
        self.k = torch.empty(layers, rows, kv_heads, columns, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)

    @property
    def columns(self) -> int:
        return self.k.shape[3]

    def zero_(self, upto: int) -> None:
        # Masked columns still enter the attention product (weight 0): they must hold finite numbers.
        self.k[:, :, :, :upto].zero_()
        self.v[:, :, :, :upto].zero_()

    def select_rows(self, index: torch.Tensor, columns: int) -> _KVCache:
        """A new cache holding rows ``index`` (columns ``[0, columns)`` copied, the rest left to be written)."""
        new = _KVCache.__new__(_KVCache)
        new.k = torch.empty(
            (self.k.shape[0], len(index), *self.k.shape[2:]), dtype=self.k.dtype, device=self.k.device
        )
        new.v = torch.empty_like(new.k)
        new.k[:, :, :, :columns] = self.k[:, index, :, :columns]
        new.v[:, :, :, :columns] = self.v[:, index, :, :columns]
        return new


class _HFCacheView:
    """Makes rows ``[r0, r1)`` of a :class:`_KVCache` look like a transformers cache for one forward call.

    Each attention layer hands its new keys/values to ``update``; they are written at columns ``[lo, hi)`` and the
    layer attends over columns ``[0, hi)``.
    """

    is_compileable = False

    def __init__(self, cache: _KVCache, r0: int, r1: int, lo: int, hi: int) -> None:
        self.cache, self.r0, self.r1, self.lo, self.hi = cache, r0, r1, lo, hi

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = self.cache.k[layer_idx, self.r0 : self.r1]
        v = self.cache.v[layer_idx, self.r0 : self.r1]
        k[:, :, self.lo : self.hi] = key_states
        v[:, :, self.lo : self.hi] = value_states
        return k[:, :, : self.hi], v[:, :, : self.hi]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.hi


# --------------------------------------------------------------------------------------------------------------------
# Forward passes over the cache layout


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    # Lower precisions: normalize in fp32 and scale after casting back, as the transformers modules do.
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: ``x * cos + rotate_half(x) * sin``, with ``rotate_half(x) * sin`` computed as
    ``roll(x, half) * signed_sin`` (``signed_sin`` is ``sin`` with its first half negated)."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), signed_sin)


class _GenericForward:
    """Runs any transformers causal LM through its own ``forward`` on the engine's cache layout."""

    bool_mask = False

    def __init__(self, model: nn.Module) -> None:
        import inspect

        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.logits_to_keep = "logits_to_keep" in params

    def __call__(self, ids, positions, cache, r0, r1, lo, hi, mask, logit_rows=None) -> torch.Tensor:
        view = _HFCacheView(cache, r0, r1, lo, hi)
        kwargs = {self.cache_arg: view, "use_cache": True}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        training = self.model.training
        if training:  # dropout off while sampling; the trainer's mode is restored below
            self.model.eval()
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        finally:
            if training:
                self.model.train()
        logits = out.logits[:, -1]
        if logit_rows is not None:
            logits = logits[logit_rows]
        return logits.float()


class _LlamaForward:
    """A compact forward for Llama-family decoders (RMSNorm, rotary, grouped-query attention, SwiGLU MLP).

    It computes the same function as the model's own ``forward`` in eval mode, reading the model's parameters on
    every call. With ``pack()`` it multiplies by oneDNN-packed copies of the linear weights instead, which on CPUs
    run small-batch products up to twice as fast (and use two cores where the default kernels use one); the engine
    repacks whenever the weights change.
    """

    bool_mask = True

    def __init__(self, model: nn.Module) -> None:
        cfg = model.config
        self.model = model
        self.packed: dict[int, torch.Tensor] | None = None  # id(nn.Linear) -> packed weight
        self.base = model.model
        self.layers = list(self.base.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.scaling = attn.scaling
        self.qk_norm = hasattr(attn, "q_norm")

    def pack(self) -> None:
        """(Re)build the packed weights from the current parameters."""
        self.packed = None  # drop the old copies before making new ones
        with torch.no_grad():
            packed = {id(self.model.lm_head): _pack(self.model.lm_head.weight.detach())}
            for layer in self.layers:
                a, m = layer.self_attn, layer.mlp
                for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                    packed[id(lin)] = _pack(lin.weight.detach())
        self.packed = packed

    def _linear(self, x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, lin.weight, lin.bias)
        return _packed_linear(x, self.packed[id(lin)], lin.bias)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in _FAST_MODEL_TYPES:
            return False
        base, head = getattr(model, "model", None), getattr(model, "lm_head", None)
        if base is None or type(head) is not nn.Linear or head.bias is not None:
            return False
        if getattr(cfg, "hidden_act", "silu") != "silu" or _uses_sliding_window(cfg):
            return False
        if not hasattr(base, "rotary_emb") or type(base.embed_tokens) is not nn.Embedding:
            return False
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            # Adapters (LoRA) or quantized layers replace nn.Linear: those need the model's own forward.
            if any(type(lin) is not nn.Linear for lin in linears):
                return False
        return True

    def __call__(self, ids, positions, cache, r0, r1, lo, hi, mask, logit_rows=None) -> torch.Tensor:
        rows, width = ids.shape
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        x = F.embedding(ids, self.base.embed_tokens.weight)
        cos, sin = self.base.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads: [rows, width, 1, head_dim]
        half = hd // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = _rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            q = self._linear(h, a.q_proj).view(rows, width, nh, hd)
            k = self._linear(h, a.k_proj).view(rows, width, nkv, hd)
            v = self._linear(h, a.v_proj).view(rows, width, nkv, hd)
            if self.qk_norm:
                q = _rms_norm(q, a.q_norm.weight, a.q_norm.variance_epsilon)
                k = _rms_norm(k, a.k_norm.weight, a.k_norm.variance_epsilon)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            ck, cv = cache.k[i, r0:r1], cache.v[i, r0:r1]
            ck[:, :, lo:hi] = k.transpose(1, 2)
            cv[:, :, lo:hi] = v.transpose(1, 2)
            keys, values = ck[:, :, :hi], cv[:, :, :hi]
            if width == 1:
                # One query per row: fold the query heads of a group into the query axis, no key repetition.
                o = F.scaled_dot_product_attention(
                    q.view(rows, nkv, nh // nkv, hd), keys, values, attn_mask=mask, scale=self.scaling
                )
                o = o.reshape(rows, 1, nh * hd)
            else:
                if nh != nkv:
                    keys = keys.repeat_interleave(nh // nkv, dim=1)
                    values = values.repeat_interleave(nh // nkv, dim=1)
                o = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, scale=self.scaling)
                o = o.transpose(1, 2).reshape(rows, width, nh * hd)
            x = x + self._linear(o, a.o_proj)
            m = layer.mlp
            h = _rms_norm(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            gated = F.silu(self._linear(h, m.gate_proj)) * self._linear(h, m.up_proj)
            x = x + self._linear(gated, m.down_proj)
        last = x[:, -1]
        if logit_rows is not None:
            last = last[logit_rows]
        last = _rms_norm(last, self.base.norm.weight, self.base.norm.variance_epsilon)
        if self.packed is not None:
            return self._linear(last, self.model.lm_head).float()
        return _lm_head(last, self.model.lm_head.weight).float()


def _pack(weight: torch.Tensor) -> torch.Tensor:
    # The batch-size hint only picks the packed layout; 8 suits decoding, and larger batches run as fast with it.
    return torch.ops.mkldnn._reorder_linear_weight(weight, 8)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packing_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN packed linear products are available and agree with ``F.linear`` here."""
    if device.type != "cpu" or dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w, x, b = torch.randn(24, 16, generator=g), torch.randn(3, 2, 16, generator=g), torch.randn(24, generator=g)
        y = _packed_linear(x, _pack(w), b)
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-4))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_HEAD_BLOCK = 512


def _lm_head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a few rows ``x`` and a vocabulary-sized ``weight``, in blocks of 512 vocabulary rows.

    The same dot products as ``F.linear``; one batched product over cache-sized blocks of the weight runs a third
    faster on CPUs than one product over the whole vocabulary when ``x`` has a handful of rows.
    """
    vocab, hidden = weight.shape
    if x.shape[0] == 1 or vocab < 2 * _HEAD_BLOCK or x.device.type != "cpu":
        return F.linear(x, weight)
    blocks = vocab // _HEAD_BLOCK
    main = weight[: blocks * _HEAD_BLOCK].view(blocks, _HEAD_BLOCK, hidden)
    out = torch.bmm(x.unsqueeze(0).expand(blocks, -1, -1), main.transpose(1, 2))  # [blocks, rows, block]
    out = out.transpose(0, 1).reshape(x.shape[0], blocks * _HEAD_BLOCK)
    if blocks * _HEAD_BLOCK < vocab:
        out = torch.cat([out, F.linear(x, weight[blocks * _HEAD_BLOCK :])], dim=1)
    return out


def _uses_sliding_window(cfg) -> bool:
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return True
    if getattr(cfg, "use_sliding_window", None) is False:
        return False
    return getattr(cfg, "sliding_window", None) is not None


# --------------------------------------------------------------------------------------------------------------------
# Sampling


def _sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of fp32 ``logits`` ``[rows, V]``; return ``(tokens, logprobs)``.

    The logprob is that of the distribution sampled from: ``log_softmax(logits / T)`` at the token, renormalized
    over the tokens top-k / top-p keep when they are set (as vLLM's processed logprobs). Top-k is applied before
    top-p, and top-p keeps the smallest set of most likely tokens whose probability (after top-k) reaches ``top_p``.
    """
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        logprobs = logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        return tokens, logprobs
    scaled = logits / params.temperature if params.temperature != 1 else logits
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
    vocab = scaled.shape[-1]
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    if not top_k and params.top_p >= 1.0:
        tokens = _inverse_cdf(torch.exp(scaled - lse), generator)
        logprobs = (scaled.gather(1, tokens[:, None]) - lse).squeeze(1)
        return tokens, logprobs
    # Only the candidates need sorting: the top-k, or for top-p alone the 1024 most likely tokens when they
    # already hold top_p of the mass (else the whole vocabulary).
    k = top_k or min(vocab, 1024)
    values, index = torch.topk(scaled, k, dim=-1)
    if top_k:
        probs = torch.softmax(values, dim=-1)
    else:
        probs = torch.exp(values - lse)
        if k < vocab and bool((probs.sum(dim=-1) < params.top_p).any()):
            values, index = torch.sort(scaled, dim=-1, descending=True)
            probs = torch.exp(values - lse)
    keep = keep_sorted(probs, params.top_p)
    kept = values.masked_fill(~keep, -torch.inf)
    choice = _inverse_cdf(torch.softmax(kept, dim=-1), generator)
    tokens = index.gather(1, choice[:, None]).squeeze(1)
    logprobs = (kept.gather(1, choice[:, None]) - torch.logsumexp(kept, dim=-1, keepdim=True)).squeeze(1)
    return tokens, logprobs


def _inverse_cdf(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row drawn with probability proportional to ``weights`` (one uniform number per row)."""
    # One random number per row instead of one per vocabulary entry, as exponential-race sampling would draw.
    cdf = weights.double().cumsum(dim=-1)
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=torch.float64).to(cdf.device)
    # side="right": the first index whose cdf exceeds u * total, so zero-weight entries are never chosen.
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=weights.shape[-1] - 1).squeeze(1)
    bad = weights.gather(1, index[:, None]).squeeze(1) <= 0  # only if rounding pushed u * total past the end
    if bool(bad.any()):
        index = torch.where(bad, weights.argmax(dim=-1), index)
    return index


# --------------------------------------------------------------------------------------------------------------------
# Kept contexts (multi-turn reuse)


@dataclass
class _Kept:
    """A context kept under a cache key: its tokens and where their keys/values live."""

    tokens: list[int]
    cache: _KVCache
    row: int
    columns: torch.Tensor  # cache column of each token, in order


# --------------------------------------------------------------------------------------------------------------------
# The engine


class TransformersEngine(Engine):
    """Batched sampling with a transformers causal LM, sharing the module with the trainer.

    Args:
        model: a transformers causal LM (``AutoModelForCausalLM``-style ``forward``), e.g. from
            :func:`agentgym.models.load_model`. The engine keeps a reference, never a copy.
        tokenizer: its tokenizer.
        seed: seed of the generator used when a request gives no ``seed``.
        max_kept_contexts: most contexts kept under cache keys; the least recently used is dropped beyond it.
        prefill_tokens: tokens per prefill chunk (rows x columns); bounds activation memory for long prompts.
        fast_forward: use the compact Llama-family forward where the model allows it (``None``: automatic).
            ``False`` always runs the model's own ``forward``.
        packed_weights: with the compact forward on a CPU in fp32, multiply by oneDNN-packed copies of the linear
            weights (``None``: automatic). Small-batch products run up to twice as fast on two cores; costs one
            more copy of the weights in memory, and a repack (about as long as copying the weights once) at the
            first ``generate`` after each weight change. Pass ``False`` when weights change more often than the
            repack pays for itself.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        seed: int | None = None,
        max_kept_contexts: int = 1024,
        prefill_tokens: int = 4096,
        fast_forward: bool | None = None,
        packed_weights: bool | None = None,
    ) -> None:
        if not hasattr(model, "config"):
            raise TypeError(
                f"TransformersEngine needs a transformers causal LM (with .config), got {type(model).__name__}."
            )
        self.model = model
        self._tokenizer = tokenizer
        if fast_forward is None:
            fast_forward = _LlamaForward.supports(model)
        elif fast_forward and not _LlamaForward.supports(model):
            raise ValueError(
                f"fast_forward=True needs a plain Llama-family model ({sorted(_FAST_MODEL_TYPES)} with nn.Linear "
                f"layers, no sliding window); got model_type={getattr(model.config, 'model_type', None)!r}. "
                "Pass fast_forward=None to choose automatically."
            )
        self._forward = _LlamaForward(model) if fast_forward else _GenericForward(model)
        weight = model.get_input_embeddings().weight
        can_pack = fast_forward and _packing_works(weight.device, weight.dtype)
        if packed_weights and not can_pack:
            raise ValueError(
                "packed_weights=True needs the compact Llama-family forward, fp32 weights on a CPU and oneDNN "
                f"(torch.backends.mkldnn); got device={weight.device}, dtype={weight.dtype}, "
                f"fast_forward={bool(fast_forward)}. Pass packed_weights=None to choose automatically."
            )
        self._packed = can_pack if packed_weights is None else bool(packed_weights)
        self._generator = torch.Generator(device="cpu")
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._max_kept = max_kept_contexts
        self._prefill_tokens = max(1, prefill_tokens)
        self._lock = threading.RLock()
        self._weights_seen = self._weights_signature()
        if self._packed:
            self._forward.pack()
        cfg = model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self._layers = text_cfg.num_hidden_layers
        self._kv_heads = getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads
        self._head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        self._max_len = getattr(text_cfg, "max_position_embeddings", None)
        self._vocab = model.get_input_embeddings().weight.shape[0]
        self._default_stop = self._eos_ids()
        self.last_stats: dict[str, int] = {}
        """Counts of the latest ``generate`` call: ``prompt_tokens``, ``reused_tokens`` (taken from kept contexts),
        ``prefill_tokens`` (computed), ``decode_steps`` and ``generated_tokens``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str = "SmolLM2-135M-Instruct", **kwargs: Any) -> TransformersEngine:
        """Load a model with :func:`agentgym.models.load_model` and wrap it (``kwargs`` go to the engine)."""
        from agentgym.models import load_model

        model, tokenizer = load_model(name_or_path)
        return cls(model, tokenizer, **kwargs)

    # ---------------------------------------------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int | None:
        return self._max_len

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._default_stop)

    @property
    def uses_fast_forward(self) -> bool:
        """True when the compact Llama-family forward runs instead of the model's own."""
        return isinstance(self._forward, _LlamaForward)

    @property
    def uses_packed_weights(self) -> bool:
        """True when linear products use oneDNN-packed weight copies."""
        return self._packed

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ---------------------------------------------------------------------------------------------------- weights

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state_dict`` into the model (entries that already are the model's own tensors are skipped, so
        pushing the weights of a shared module costs nothing) and drop every kept context.

        Keys may carry a ``module.`` prefix (DistributedDataParallel). Unknown keys raise ``KeyError``.
        """
        with self._lock:
            own = self.model.state_dict(keep_vars=True)
            pairs, unknown = [], []
            for name, value in state_dict.items():
                key = name[len("module.") :] if name not in own and name.startswith("module.") else name
                target = own.get(key)
                if target is None:
                    unknown.append(name)
                elif target.shape != value.shape:
                    raise ValueError(
                        f"load_weights: {name} has shape {tuple(value.shape)}, the model expects "
                        f"{tuple(target.shape)}. Pass the state_dict of the same architecture."
                    )
                else:
                    pairs.append((target, value))
            if unknown:
                raise KeyError(
                    f"load_weights: {len(unknown)} keys are not parameters or buffers of the model, e.g. "
                    f"{unknown[:5]}. Pass the state_dict of the same architecture; nothing was loaded."
                )
            with torch.no_grad():
                for target, value in pairs:
                    if value.device == target.device and value.data_ptr() == target.data_ptr():
                        continue
                    target.copy_(value)
            self.clear_cache()

    def _weights_signature(self) -> tuple:
        """A cheap fingerprint of the parameters: storage, version counters and a few values of each tensor.

        In-place updates (optimizer steps, ``load_state_dict``) bump version counters and replacing a parameter
        changes its storage; fused optimizers and writes through ``.data`` do neither, so four values per tensor
        are compared as well. Any of these changing means kept keys/values are stale.
        """
        params = [p.detach() for p in self.model.parameters()]
        probes = []
        for p in params:
            flat = p.reshape(-1)
            n = flat.numel()
            probes.append(flat[torch.tensor([0, n // 3, (2 * n) // 3, n - 1], device=flat.device)])
        values = torch.cat(probes).float().cpu() if probes else torch.empty(0)
        return tuple((p.data_ptr(), p._version) for p in params), values

    def _weights_changed(self, signature: tuple) -> bool:
        seen = self._weights_seen
        return seen[0] != signature[0] or not torch.equal(seen[1], signature[1])

    # ---------------------------------------------------------------------------------------------------- contexts

    def release(self, cache_key: str) -> None:
        with self._lock:
            self._kept.pop(cache_key, None)

    def clear_cache(self) -> None:
        """Forget every kept context."""
        with self._lock:
            self._kept.clear()

    def release_memory(self) -> None:
        """Free what only sampling needs (kept contexts, packed weight copies) while the trainer updates the
        weights; the next ``generate`` repacks, as it would after any weight change."""
        with self._lock:
            self._kept.clear()
            if self._packed:
                self._forward.packed = None

    @property
    def kept_keys(self) -> list[str]:
        """The cache keys whose contexts are kept, least recently used first."""
        return list(self._kept)

    # ---------------------------------------------------------------------------------------------------- generate

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        cache_keys: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        params = params if params is not None else SamplingParams()
        prompts = [self._as_ids(p, i) for i, p in enumerate(prompts)]
        if cache_keys is not None:
            cache_keys = list(cache_keys)
            if len(cache_keys) != len(prompts):
                raise ValueError(f"cache_keys has {len(cache_keys)} entries for {len(prompts)} prompts; give one each.")
            if len(set(cache_keys)) != len(cache_keys):
                raise ValueError("cache_keys must be distinct within one generate call (one key per episode).")
        if not prompts:
            return []
        with self._lock, torch.inference_mode():
            signature = self._weights_signature()
            if self._weights_changed(signature):
                self._kept.clear()
                self._weights_seen = signature
                if self._packed:
                    self._forward.pack()
            elif self._packed and self._forward.packed is None:  # released by release_memory()
                self._forward.pack()
            return self._generate(prompts, params, cache_keys)

    def _as_ids(self, prompt: Sequence[int], index: int) -> list[int]:
        ids = prompt.tolist() if hasattr(prompt, "tolist") else [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {index} is empty; give at least one token id.")
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= self._vocab:
            raise ValueError(f"prompt {index} holds token id {lo if lo < 0 else hi}, outside [0, {self._vocab}).")
        if self._max_len is not None and len(ids) >= self._max_len:
            raise ValueError(
                f"prompt {index} has {len(ids)} tokens; the model's context is {self._max_len} tokens and must "
                "leave room for at least one new token. Shorten the prompt."
            )
        return ids

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), getattr(self._tokenizer, "eos_token_id", None)):
            if source is None:
                continue
            for t in source if isinstance(source, (list, tuple)) else [source]:
                if t not in ids:
                    ids.append(int(t))
        return ids

    def _generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        cache_keys: list[str] | None,
    ) -> list[list[Completion]]:
        device = self.device
        n = params.n
        num = len(prompts)

        # ---- 1. what each prompt can reuse
        reuse = [0] * num
        sources: list[_Kept | None] = [None] * num
        if cache_keys is not None:
            for i, key in enumerate(cache_keys):
                kept = self._kept.get(key)
                if kept is None:
                    continue
                self._kept.move_to_end(key)
                common = _common_prefix(kept.tokens, prompts[i])
                reuse[i] = min(common, len(prompts[i]) - 1)
                sources[i] = kept if reuse[i] > 0 else None
        new_len = [len(p) - r for p, r in zip(prompts, reuse)]

        # Rows sorted by new length (longest first) so prefill groups are contiguous slices of similar width.
        order = sorted(range(num), key=lambda i: -new_len[i])
        reuse_s = [reuse[i] for i in order]
        new_s = [new_len[i] for i in order]
        lens_s = [len(prompts[i]) for i in order]
        C, W = max(reuse_s), max(new_s)
        budgets_s = [
            params.max_new_tokens if self._max_len is None else min(params.max_new_tokens, self._max_len - ln)
            for ln in lens_s
        ]
        max_steps = max(budgets_s)
        prompt_end = C + W
        total_cols = prompt_end + max_steps - 1  # the last sampled token is never fed back

        # ---- 2. layout and reused keys/values
        cache = _KVCache(
            self._layers, num, self._kv_heads, total_cols if n == 1 else prompt_end, self._head_dim,
            self._cache_dtype(), device,
        )
        cache.zero_(prompt_end)
        valid = torch.zeros(num, cache.columns, dtype=torch.bool, device=device)
        for row, i in enumerate(order):
            r = reuse_s[row]
            if r:
                src = sources[i]
                cols = src.columns[:r]
                cache.k[:, row, :, C - r : C] = src.cache.k[:, src.row].index_select(2, cols)
                cache.v[:, row, :, C - r : C] = src.cache.v[:, src.row].index_select(2, cols)
                valid[row, C - r : C] = True
            valid[row, prompt_end - new_s[row] : prompt_end] = True
        if cache_keys is not None:
            # The reused keys/values are copied: drop the old contexts now, so that the cache they live in is freed
            # before this call decodes (each key is kept again below, in the new cache).
            for i, key in enumerate(cache_keys):
                if sources[i] is not None:
                    self._kept.pop(key, None)
            sources = [None] * num
            kept = src = None  # noqa: F841 (no reference may keep the old cache alive)

        # ---- 3. prefill
        first_logits = torch.empty(num, self._vocab, dtype=torch.float32, device=device)
        tokens_s = [prompts[i][reuse[i]:] for i in order]
        for r0, r1 in _row_groups(new_s, self._prefill_tokens):
            width = new_s[r0]
            ids = torch.zeros(r1 - r0, width, dtype=torch.long)
            pos = torch.zeros(r1 - r0, width, dtype=torch.long)
            for j, row in enumerate(range(r0, r1)):
                k = new_s[row]
                ids[j, width - k :] = torch.tensor(tokens_s[row], dtype=torch.long)
                pos[j, width - k :] = torch.arange(reuse_s[row], lens_s[row])
            ids, pos = ids.to(device), pos.to(device)
            chunk = max(1, self._prefill_tokens // (r1 - r0))
            start = prompt_end - width
            for c0 in range(start, prompt_end, chunk):
                c1 = min(prompt_end, c0 + chunk)
                mask = self._prefill_mask(valid[r0:r1, :c1], c0, c1)
                logits = self._forward(
                    ids[:, c0 - start : c1 - start], pos[:, c0 - start : c1 - start], cache, r0, r1, c0, c1, mask
                )
            first_logits[r0:r1] = logits

        # Kept contexts of prompts sampled n > 1 times are their prompts (the samples diverge after it).
        prefill_cache = cache
        if n > 1:
            cache = _KVCache(
                self._layers, num * n, self._kv_heads, total_cols, self._head_dim, self._cache_dtype(), device
            )
            cache.k[:, :, :, :prompt_end] = prefill_cache.k.repeat_interleave(n, dim=1)
            cache.v[:, :, :, :prompt_end] = prefill_cache.v.repeat_interleave(n, dim=1)
            valid = torch.cat(
                [valid.repeat_interleave(n, dim=0),
                 torch.zeros(num * n, total_cols - prompt_end, dtype=torch.bool, device=device)], dim=1
            )
            first_logits = first_logits.repeat_interleave(n, dim=0)

        # ---- 4. decode
        rows = num * n
        row_budget = [budgets_s[r // n] for r in range(rows)]
        row_len = torch.tensor([lens_s[r // n] for r in range(rows)], dtype=torch.long, device=device)
        out_tokens, out_logprobs, out_len, finish, home, steps = self._decode(
            params, cache, valid, first_logits, row_budget, row_len, prompt_end, max_steps
        )
        self.last_stats = {
            "kv_cache_bytes": 2 * (cache.k.numel() + (prefill_cache.k.numel() if prefill_cache is not cache else 0))
            * cache.k.element_size(),
            "prompt_tokens": sum(lens_s),
            "reused_tokens": sum(reuse_s),
            "prefill_tokens": sum(new_s),
            "decode_steps": steps,
            "generated_tokens": sum(out_len),
        }

        # ---- 5. completions, and the contexts to keep
        results: list[list[Completion]] = [[] for _ in range(num)]
        for s, i in enumerate(order):
            for j in range(n):
                g = s * n + j
                ids = out_tokens[g, : out_len[g]].tolist()
                reason, stop_reason = finish[g]
                results[i].append(
                    Completion(
                        token_ids=ids,
                        logprobs=out_logprobs[g, : out_len[g]].tolist(),
                        finish_reason=reason,
                        text=self._text(ids, stop_reason if isinstance(stop_reason, str) else None),
                        stop_reason=stop_reason,
                    )
                )
        if cache_keys is not None:
            for s, i in enumerate(order):
                prompt_cols = torch.cat(
                    [torch.arange(C - reuse_s[s], C), torch.arange(prompt_end - new_s[s], prompt_end)]
                ).to(device)
                if n == 1:
                    kv, row = home[s]
                    fed = results[i][0].token_ids[:-1]
                    columns = torch.cat([prompt_cols, torch.arange(prompt_end, prompt_end + len(fed), device=device)])
                    self._keep(cache_keys[i], _Kept(prompts[i] + fed, kv, row, columns))
                else:
                    self._keep(cache_keys[i], _Kept(list(prompts[i]), prefill_cache, s, prompt_cols))
        return results

    def _decode(
        self,
        params: SamplingParams,
        cache: _KVCache,
        valid: torch.Tensor,
        logits: torch.Tensor,
        row_budget: list[int],
        row_len: torch.Tensor,
        col: int,
        max_steps: int,
    ):
        """Sample every row until it stops; feed each sampled token back at column ``col``, ``col + 1``, ...

        Returns the sampled tokens and logprobs ``[rows, max_steps]``, each row's length and ``(finish_reason,
        stop_reason)``, where each row's keys/values ended up (``row -> (cache, index)``), and the steps taken.
        """
        device = valid.device
        rows = len(row_budget)
        out_tokens = torch.zeros(rows, max_steps, dtype=torch.long)
        out_logprobs = torch.zeros(rows, max_steps, dtype=torch.float32)
        out_len = [0] * rows
        finish: list[tuple[str, int | str | None]] = [("length", None)] * rows
        stop_set = set(self._default_stop if params.stop_token_ids is None else params.stop_token_ids)
        stop_strings = params.stop or []
        stop_window = max((len(s) for s in stop_strings), default=0) + 4
        generator = self._generator
        if params.seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(params.seed)

        # Rows of the working cache (as row ids), and where finished rows' keys/values stay once it shrinks.
        work = list(range(rows))
        home: dict[int, tuple[_KVCache, int]] = {}
        running = [True] * rows  # by position in `work`
        last_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        step = 0
        for step in range(max_steps):
            active_pos = [p for p, alive in enumerate(running) if alive]
            # After the first step the forward already computed logits for the running rows only.
            toks, lps = _sample(logits, params, generator)
            toks_list = toks.tolist()
            active_rows = [work[p] for p in active_pos]
            out_tokens[active_rows, step] = toks.cpu()
            out_logprobs[active_rows, step] = lps.cpu()
            last_tokens[active_pos] = toks
            for p, g, tok in zip(active_pos, active_rows, toks_list):
                out_len[g] = step + 1
                if tok in stop_set:
                    finish[g] = ("stop", tok)
                elif stop_strings and (hit := self._stop_hit(out_tokens[g, : step + 1], stop_strings, stop_window)):
                    finish[g] = ("stop", hit)
                elif step + 1 >= row_budget[g]:
                    finish[g] = ("length", None)
                else:
                    continue
                running[p] = False
            n_running = sum(running)
            if n_running == 0:
                break
            if n_running <= len(work) // 2 and len(work) >= 4:
                # Half the rows are done: keep decoding only the running ones (their keys/values move to a
                # smaller cache; the finished rows' stay where they are, for the kept contexts).
                keep = [p for p, alive in enumerate(running) if alive]
                for p, alive in enumerate(running):
                    if not alive:
                        home[work[p]] = (cache, p)
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache = cache.select_rows(index, col)
                valid, row_len, last_tokens = valid[index], row_len[index], last_tokens[index]
                work = [work[p] for p in keep]
                running = [True] * len(work)
            # Feed the sampled tokens (finished rows still in the working cache are fed too, and ignored).
            valid[:, col] = True
            mask = valid[:, None, None, : col + 1]
            if not self._forward.bool_mask:
                mask = _additive(mask, self._cache_dtype())
            logit_rows = None
            if n_running < len(work):
                logit_rows = torch.tensor([p for p, alive in enumerate(running) if alive], device=device)
            positions = (row_len + step)[:, None]
            logits = self._forward(last_tokens[:, None], positions, cache, 0, len(work), col, col + 1, mask, logit_rows)
            col += 1
        for p, g in enumerate(work):
            home.setdefault(g, (cache, p))
        return out_tokens, out_logprobs, out_len, finish, home, step + 1

    # ---------------------------------------------------------------------------------------------------- helpers

    def _cache_dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def _prefill_mask(self, valid: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """``[rows, 1, c1 - c0, c1]``: query column q sees valid key columns k <= q, and always itself."""
        device = valid.device
        q = torch.arange(c0, c1, device=device)[:, None]
        k = torch.arange(c1, device=device)[None, :]
        mask = (valid[:, None, :] & (k <= q)[None]) | (k == q)[None]
        mask = mask[:, None]
        return mask if self._forward.bool_mask else _additive(mask, self._cache_dtype())

    def _stop_hit(self, tokens: torch.Tensor, stops: list[str], window: int) -> str | None:
        tail = self._tokenizer.decode(tokens[-window:].tolist(), skip_special_tokens=True)
        for s in stops:
            if s in tail:
                return s
        return None

    def _text(self, ids: list[int], stop: str | None) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        if stop is not None:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text

    def _keep(self, key: str, kept: _Kept) -> None:
        self._kept[key] = kept
        self._kept.move_to_end(key)
        while len(self._kept) > self._max_kept:
            self._kept.popitem(last=False)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive float mask (0 where attended, the dtype's minimum elsewhere)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n and a[n - 1] == b[n - 1] and a[:n] == b[:n]:  # the usual case: b extends a
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _row_groups(widths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split rows (sorted by width, widest first) into contiguous groups of at most ``budget`` padded tokens."""
    groups, start = [], 0
    while start < len(widths):
        end = start + 1
        while end < len(widths) and widths[start] * (end + 1 - start) <= budget:
            end += 1
        groups.append((start, end))
        start = end
    return groups

