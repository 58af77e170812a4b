"""Loss aggregation: how per-token losses l_{i,t} become one scalar, independent of micro-batching.

With m_t = loss_mask, s(t) the sequence of policy token t and n_s its number of policy tokens, over a minibatch:

    token-mean                 sum_t m l / N_tok                           (DAPO)
    seq-mean-token-mean        sum_s (sum_{t in s} l / n_s) / N_seq        (GRPO, GSPO)
    seq-mean-token-sum         sum_s (sum_{t in s} l) / N_seq              (RLOO: a sequence is one action)
    seq-mean-token-sum-norm    sum_s (sum_{t in s} l) / (N_seq * max_tokens)   (Dr. GRPO's constant normalizer)

A sequence is what the papers mean by one: the episode, all its turns, also when an episode that could not be merged
is split into one row per turn (`cfg.sequence = "episode"`, the default); `cfg.sequence = "turn"` makes each turn
its own sequence instead. N_tok, N_seq and n_s are counted once over the whole minibatch (`loss_normalizer`,
`sequence_keys`) and passed to every micro-batch, so the sum of micro-batch losses equals the minibatch loss (and so
do the gradients) however the rows are split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.episodes import EpisodeIndex, require_keys
from agentgym.algos.registry import Registry

if TYPE_CHECKING:  # the config imports the registries defined here
    from agentgym.algos.config import AlgoConfig


@dataclass(frozen=True)
class LossNormalizer:
    """Denominators counted once over a minibatch, shared by all of its micro-batches."""

    num_tokens: float
    """N_tok: policy tokens in the minibatch (at least 1)"""
    num_sequences: float
    """N_seq: sequences (episodes, or turns with cfg.sequence="turn") with a policy token (at least 1)"""
    max_tokens: float
    """Dr. GRPO's constant: cfg.max_tokens, or the minibatch's padded length T when that is None"""


def sequence_ids(batch: TensorDict, cfg: AlgoConfig) -> Tensor:
    """[B, T] long: the sequence (0..S-1) each policy token belongs to, -1 off the policy tokens.

    A sequence is an episode (a distinct episode_id, agent_id), or with ``cfg.sequence == "turn"`` one turn of an
    episode. A batch without episode_id counts each row as its own episode.
    """
    require_keys(batch, ("loss_mask",), "sequences are made of policy tokens")
    mask = batch["loss_mask"].bool()
    rows = mask.shape[0]
    if "episode_id" in batch.keys():
        row_key = EpisodeIndex.from_batch(batch, cfg.group_by_agent).row_episode
    else:
        row_key = torch.arange(rows, device=mask.device)
    key = row_key[:, None].expand(mask.shape)
    if cfg.sequence == "turn":
        require_keys(batch, ("turn_ids",), 'cfg.sequence="turn" splits episodes by turn')
        turns = batch["turn_ids"].long().clamp(min=0)
        key = key * (int(turns.max().item()) + 1 if turns.numel() else 1) + turns
    ids = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    if mask.any():
        _, compact = torch.unique(key[mask], return_inverse=True)
        ids[mask] = compact
    return ids


def sequence_keys(minibatch: TensorDict, cfg: AlgoConfig) -> TensorDict:
    """A copy of `minibatch` with ``seq_ids`` ([B, T] long, `sequence_ids`) and ``seq_tokens`` ([B, T] float: n_s,
    the number of policy tokens of each policy token's sequence in the whole minibatch; 0 elsewhere).

    Call it once per minibatch, before splitting it into micro-batches, so that every micro-batch weighs its tokens
    by their whole sequence.
    """
    ids = sequence_ids(minibatch, cfg)
    mask = ids >= 0
    counts = torch.bincount(ids[mask], minlength=1).to(torch.float32)
    seq_tokens = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    seq_tokens[mask] = counts[ids[mask]]
    out = minibatch.clone(recurse=False)
    out.set("seq_ids", ids)
    out.set("seq_tokens", seq_tokens)
    return out


def loss_normalizer(minibatch: TensorDict, cfg: AlgoConfig) -> LossNormalizer:
    """Count the aggregation denominators of `minibatch` (call once per minibatch, before splitting it)."""
    require_keys(minibatch, ("loss_mask",), "loss normalizers count policy tokens")
    mask = minibatch["loss_mask"].bool()
    num_tokens = float(mask.sum().item())
    ids = minibatch["seq_ids"] if "seq_ids" in minibatch.keys() else sequence_ids(minibatch, cfg)
    num_sequences = float(ids.max().item() + 1) if ids.numel() else 0.0
    max_tokens = float(cfg.max_tokens if cfg.max_tokens is not None else mask.shape[-1])
    return LossNormalizer(max(num_tokens, 1.0), max(num_sequences, 1.0), max(max_tokens, 1.0))


AggregateFn = Callable[[Tensor, Tensor, LossNormalizer, Tensor], Tensor]
"""(values [b, T], mask [b, T] float, normalizer, seq_tokens [b, T] float: n_s at each policy token) -> scalar"""
AGGREGATIONS: Registry[AggregateFn] = Registry("loss aggregation")
register_aggregation = AGGREGATIONS.register


@register_aggregation("token-mean")
def token_mean(values: Tensor, mask: Tensor, norm: LossNormalizer, seq_tokens: Tensor) -> Tensor:
    """sum_t m l / N_tok: every policy token weighs the same."""
    return (values * mask).sum() / norm.num_tokens


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, norm: LossNormalizer, seq_tokens: Tensor) -> Tensor:
    """sum_s (sum_{t in s} l / n_s) / N_seq: every sequence weighs the same, its tokens share its weight."""
    return (values * mask / seq_tokens.clamp(min=1)).sum() / norm.num_sequences


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(values: Tensor, mask: Tensor, norm: LossNormalizer, seq_tokens: Tensor) -> Tensor:
    """sum_s (sum_{t in s} l) / N_seq: every token weighs the same within the per-sequence sum."""
    return (values * mask).sum() / norm.num_sequences


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values: Tensor, mask: Tensor, norm: LossNormalizer, seq_tokens: Tensor) -> Tensor:
    """sum_t m l / (N_seq * max_tokens): Dr. GRPO's length-unbiased constant normalizer."""
    return (values * mask).sum() / (norm.num_sequences * norm.max_tokens)


def aggregate(values: Tensor, mask: Tensor, mode: str, normalizer: LossNormalizer,
              seq_tokens: Tensor | None = None) -> Tensor:
    """Aggregate per-token `values` [b, T] over the policy tokens in `mask` with the named mode.

    `seq_tokens` ([b, T], from `sequence_keys` of the minibatch) gives each token's sequence length n_s; without it
    every row is its own sequence.
    """
    mask = mask.bool()
    # where(), not a product: padding may hold inf/nan (e.g. -inf logprobs) and must not leak into the sum.
    values = values.masked_fill(~mask, 0.0)
    if seq_tokens is None:
        seq_tokens = mask.sum(-1, keepdim=True).expand(mask.shape)
    seq_tokens = seq_tokens.to(values.dtype)
    return AGGREGATIONS.lookup(mode)(values, mask.to(values.dtype), normalizer, seq_tokens)
