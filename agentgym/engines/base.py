"""The engine interface: sampling parameters, completions, and the abstract :class:`Engine`.

An engine turns token-id contexts into sampled token ids, each with the logprob it was sampled at. The trainer
relies on that logprob being exactly this quantity (see ``docs/CONTRACTS.md``)::

    logprob(token) = log_softmax(logits / T)[token]                 (no top-k / top-p)
    logprob(token) = truncated_log_softmax(logits / T, k, p)[token]  (renormalized over what top-k, top-p keep)

where ``logits`` are the model's fp32 next-token logits for the context and ``T`` is the sampling temperature
(``T = 1`` for greedy decoding, ``temperature == 0``): the logprob of the distribution the token was drawn from, the
behaviour policy. The trainer computes the same number on a teacher-forced forward pass
(:func:`agentgym.training.policy.forward`), so ``old_logprobs`` need no second forward pass.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample completions. One ``SamplingParams`` applies to every prompt of a ``generate`` call."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax) decoding."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens whose probabilities sum to at least ``top_p``."""
    top_k: int = 0
    """Sample among the ``top_k`` most likely tokens; 0 disables the cut."""
    max_new_tokens: int = 64
    """Most tokens to generate per completion (fewer if the model's context ends first)."""
    stop_token_ids: list[int] | None = None
    """Tokens that end a completion (and are part of it). ``None``: the model's end-of-sequence tokens; ``[]``: none."""
    stop: list[str] | None = None
    """Strings that end a completion. The tokens sampled up to the one that completes the string stay in
    ``token_ids``; ``text`` is cut before the string."""
    seed: int | None = None
    """Seed of this request's random generator: the same prompts, parameters and seed give the same completions."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        problems = []
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an integer >= 1, got {self.n!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or self.temperature < 0:
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.stop_token_ids is not None and not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            problems.append(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if self.stop is not None and not all(isinstance(s, str) and s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ValueError("Invalid SamplingParams: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (``temperature == 0``)."""
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    """The sampled tokens, exactly as sampled (a stop token that ended the completion included)."""
    logprobs: list[float]
    """The logprob of each sampled token under the distribution it was sampled from (one per token)."""
    finish_reason: FinishReason
    """``"stop"`` (a stop token or stop string) or ``"length"`` (``max_new_tokens`` or the context limit)."""
    text: str = ""
    """The decoded tokens without special tokens, cut before a stop string that ended the completion."""
    stop_reason: int | str | None = field(default=None)
    """The stop token id or stop string that ended the completion, if any."""


class Engine(abc.ABC):
    """Samples continuations of token-id contexts with exact per-token logprobs.

    Implementations: :class:`~agentgym.engines.TransformersEngine` (CPU or one GPU, in-process, the default) and
    :class:`~agentgym.engines.VLLMEngine` (GPU).
    """

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer that maps text to the token ids this engine consumes and produces."""

    @property
    def max_model_len(self) -> int | None:
        """The longest context (prompt plus completion) the model supports, if known."""
        return None

    @property
    def eos_token_ids(self) -> list[int]:
        """The tokens that end a completion when ``SamplingParams.stop_token_ids`` is ``None``."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [] if eos is None else [int(eos)]

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        cache_keys: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        """Sample ``params.n`` completions for each prompt.

        Args:
            prompts: token-id contexts, one per request.
            params: sampling parameters (default ``SamplingParams()``).
            cache_keys: one key per prompt (e.g. an episode id), or ``None``. The engine keeps the key's context
                after the call; a later prompt under the same key that extends it prefills only the new tokens.

        Returns:
            For each prompt, its ``n`` completions.
        """

    def release(self, cache_key: str) -> None:
        """Forget the context kept under ``cache_key`` (call it when an episode ends). Unknown keys are ignored."""

    @abc.abstractmethod
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy weights with ``state_dict`` (the trainer's after an update). Drops kept contexts."""


def sampled_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """The engine's logprob of each token: ``log_softmax(logits / T)`` at ``token_ids`` in fp32, renormalized over
    what top-k / top-p keep when they are set (greedy, ``temperature == 0``, ignores them).

    Args:
        logits: ``[..., V]`` next-token logits (the logits at position ``t - 1`` score token ``t``).
        token_ids: ``[...]`` token ids.
        temperature: sampling temperature; 0 (greedy) counts as 1.
        top_k, top_p: the truncation sampled with (0 / 1: none).

    Returns:
        ``[...]`` fp32 logprobs (-inf for a token the truncation would not keep).
    """
    logits = logits.float()
    if temperature not in (0, 1):
        logits = logits / temperature
    if temperature == 0:
        top_k, top_p = 0, 1.0
    shape = logits.shape
    logp = truncated_log_softmax(logits.reshape(-1, shape[-1]), top_k, top_p).reshape(shape)
    return logp.gather(-1, token_ids.unsqueeze(-1).long()).squeeze(-1)


def keep_sorted(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which candidates top-p keeps, given their probabilities ``probs`` ``[N, K]`` sorted descending (over the
    whole vocabulary, or renormalized over the top-k): the smallest prefix whose mass reaches ``top_p``, the most
    likely token always. ``[N, K]`` bool."""
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    return (probs.cumsum(dim=-1) - probs) < top_p


def truncated_log_softmax(scaled: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``log_softmax`` of temperature-scaled logits ``[N, V]`` over the tokens that top-k, then top-p, keep; -inf
    elsewhere. This is the distribution an engine samples from, and the logprob it reports, with truncation."""
    vocab = scaled.shape[-1]
    top_k = top_k if 0 < top_k < vocab else 0
    if not top_k and top_p >= 1.0:
        return torch.log_softmax(scaled, dim=-1)
    with torch.no_grad():
        if top_k:
            values, index = torch.topk(scaled, top_k, dim=-1)
            probs = torch.softmax(values, dim=-1)
        else:
            values, index = torch.sort(scaled, dim=-1, descending=True)
            probs = torch.exp(values - torch.logsumexp(scaled, dim=-1, keepdim=True))
        keep = torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, index, keep_sorted(probs, top_p))
    return torch.log_softmax(scaled.masked_fill(~keep, -torch.inf), dim=-1)
