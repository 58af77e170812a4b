"""The trainer's side of the policy: a causal LM (optionally with LoRA) and a value head.

:func:`forward` computes, for the tokens of a batch, the same logprob the engine reports when it samples:
``log_softmax(logits / temperature)`` at the token, renormalized over what top-k / top-p keep when they are set.
The LM head runs only over the positions whose next token is trained, a chunk at a time, so memory grows with
policy tokens, not with the whole context, and never holds more than one chunk's full-vocabulary logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from agentgym.engines.base import truncated_log_softmax


class ValueHead(nn.Module):
    """A linear value estimate V(s) from the policy's last hidden state (PPO's critic shares the LM's body)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden).squeeze(-1)


@dataclass
class ForwardOutput:
    """Per-token outputs aligned with ``input_ids`` (value at t belongs to token t), zero off ``mask``."""

    logprobs: Tensor
    entropy: Tensor | None
    values: Tensor | None
    bootstrap_values: Tensor | None = None
    """[B] V(state after the row's last real token), with ``value_head`` (GAE bootstraps truncated episodes)"""


TRUNCATED_LOGPROB_FLOOR = -100.0
"""The logprob reported for a token that top-k / top-p would not keep (its probability is 0)."""

HEAD_CHUNK_TOKENS = 256
"""Policy tokens per LM-head chunk: full-vocabulary logits exist for one chunk at a time, in backward too."""


def forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    value_head: ValueHead | None = None,
    with_entropy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
) -> ForwardOutput:
    """Logprobs (and entropies, values) of the tokens where ``mask`` is True, given their prefixes.

    Args:
        model: a transformers causal LM (or a peft model around one).
        input_ids: [B, T] right-padded tokens.
        attention_mask: [B, T] True on real tokens.
        mask: [B, T] tokens to score (normally the loss mask). Position 0 cannot be scored.
        temperature: the sampling temperature the engine used (0 means greedy and counts as 1).
        value_head: when given, also V(prefix) for each masked token, from the hidden state before it, and
            ``bootstrap_values``, V after each row's last real token.
        with_entropy: also the entropy of the sampling distribution at each masked token.
        top_k, top_p: the truncation the engine sampled with: logprobs and entropies are those of the distribution
            renormalized over the tokens top-k / top-p keep (the engine reports the same); 0 / 1 disable it.

    The LM head runs only on the masked positions, ``HEAD_CHUNK_TOKENS`` at a time, and under autograd each chunk
    (when there are several) is recomputed in backward instead of keeping its [chunk, vocab] tensors.
    """
    if bool(mask[:, 0].any()):
        raise ValueError("mask[:, 0] is set: the first token of a row has no prefix to score it from")
    temp = 1.0 if temperature <= 0 else float(temperature)
    if temperature <= 0:  # greedy decoding reports the untruncated logprob
        top_k, top_p = 0, 1.0
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    last_hidden = out.hidden_states[-1]
    del out
    sel = mask[:, 1:]
    h = last_hidden[:, :-1][sel]  # hidden at t-1 predicts token t
    targets = input_ids[:, 1:][sel]
    token_lp, token_ent = head_logprobs(_lm_head(model), h, targets, temp, top_k, top_p, with_entropy)
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    logprobs[:, 1:][sel] = token_lp
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logprobs)
        entropy[:, 1:][sel] = token_ent
    values = bootstrap = None
    if value_head is not None:
        values = torch.zeros_like(logprobs)
        values[:, 1:][sel] = value_head(h.float())
        last = attention_mask.long().sum(-1).clamp(min=1) - 1
        bootstrap = value_head(last_hidden[torch.arange(last.numel(), device=last.device), last].float())
    return ForwardOutput(logprobs, entropy, values, bootstrap)


def head_logprobs(
    head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float = 1.0, top_k: int = 0,
    top_p: float = 1.0, with_entropy: bool = False, chunk: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs [N], entropies [N] or None)`` of ``targets`` under ``head(hidden) / temperature`` (truncated by
    top-k / top-p when set), computed ``chunk`` (default ``HEAD_CHUNK_TOKENS``) rows at a time."""
    chunk = chunk or HEAD_CHUNK_TOKENS
    lps, ents = [], []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    # With one chunk, recomputing it in backward would not lower the peak (it is live at the start of backward
    # either way): only several chunks are checkpointed, so that no two are ever held at once.
    grad = grad and hidden.shape[0] > chunk
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], targets[i : i + chunk])
        fn = _ChunkScore(head, temperature, top_k, top_p, with_entropy)
        lp, ent = checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


@dataclass
class _ChunkScore:
    head: nn.Module
    temperature: float
    top_k: int
    top_p: float
    with_entropy: bool

    def __call__(self, h: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(h).float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        logp = truncated_log_softmax(logits, self.top_k, self.top_p)
        lp = logp.gather(-1, targets[:, None]).squeeze(-1)
        truncated = (0 < self.top_k < logits.shape[-1]) or self.top_p < 1.0
        if truncated:
            # A token outside what top-k/top-p keep has probability 0: a finite floor keeps ratios and KL finite.
            lp = lp.clamp(min=TRUNCATED_LOGPROB_FLOOR)
        if not self.with_entropy:
            return lp, lp.new_zeros(0)
        if truncated:  # 0 * log 0 = 0, also in backward
            logp = logp.masked_fill(torch.isneginf(logp), 0.0)
        return lp, -(logp.exp() * logp).sum(-1)


def _lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def hidden_size(model: Any) -> int:
    """The width of the model's last hidden state."""
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)


def decoder_layers(model: Any) -> list[nn.Module]:
    """The transformer blocks of a transformers causal LM (or a peft model around one); [] when not found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def set_activation_checkpointing(model: Any, on: bool) -> bool:
    """Recompute each decoder layer's activations in backward (``on``) or keep them (off). Returns whether the
    model supports it.

    Only the blocks' own ``training`` flag is set (transformers checkpoints a block only in training mode); the
    modules inside them stay in eval mode, so nothing like dropout changes what the trainer computes.
    """
    layers = [layer for layer in decoder_layers(model) if hasattr(layer, "_gradient_checkpointing_func")
              or hasattr(type(layer), "gradient_checkpointing")]
    if not layers:
        return False
    func = partial(checkpoint, use_reentrant=False)
    for layer in layers:
        layer.gradient_checkpointing = on
        layer._gradient_checkpointing_func = func
        layer.training = on
    return True


def activation_bytes_per_token(model: Any) -> int:
    """A rough count of the bytes one token's activations take in a forward kept for backward (fp32):
    per layer about 10 hidden-size and 4 intermediate-size vectors."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    return 4 * layers * (10 * hidden + 4 * inter)
