"""The trainer's side of the policy: a causal LM (optionally with LoRA) and a value head.

:func:`forward` computes, for the tokens of a batch, the same logprob the engine reports when it samples:
``log_softmax(logits / temperature)`` at the token, before any top-k/top-p truncation. The LM head runs only over
the positions whose next token is trained, so memory grows with policy tokens, not with the whole context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


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


def forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    value_head: ValueHead | None = None,
    with_entropy: bool = False,
) -> ForwardOutput:
    """Logprobs (and entropies, values) of the tokens where ``mask`` is True, given their prefixes.

    Args:
        model: a transformers causal LM (or a peft model around one).
        input_ids: [B, T] right-padded tokens.
        attention_mask: [B, T] True on real tokens.
        mask: [B, T] tokens to score (normally the loss mask). Position 0 cannot be scored.
        temperature: the sampling temperature the engine used (0 means greedy and counts as 1).
        value_head: when given, also V(prefix) for each masked token, from the hidden state before it.
        with_entropy: also the entropy of the temperature-scaled distribution at each masked token.
    """
    if bool(mask[:, 0].any()):
        raise ValueError("mask[:, 0] is set: the first token of a row has no prefix to score it from")
    temp = 1.0 if temperature <= 0 else float(temperature)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][:, :-1]  # hidden at t-1 predicts token t
    sel = mask[:, 1:]
    h = hidden[sel]
    logits = _lm_head(model)(h).float() / temp
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, 1:][sel]
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    logprobs[:, 1:][sel] = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logprobs)
        entropy[:, 1:][sel] = -(logp_all.exp() * logp_all).sum(-1)
    values = None
    if value_head is not None:
        values = torch.zeros_like(logprobs)
        values[:, 1:][sel] = value_head(h.float())
    return ForwardOutput(logprobs, entropy, values)


def _lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def hidden_size(model: Any) -> int:
    """The width of the model's last hidden state."""
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)
