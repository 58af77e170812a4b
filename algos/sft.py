"""Supervised fine-tuning on trajectories: the SFT loss, and rejection-sampling selection of episodes.

SFT loss (behaviour cloning of the kept episodes), per policy token y_t (loss_mask m = 1 exactly on the tokens the
policy sampled, so prompts, observations, tool results and other agents' words are context, never targets):

    l_t   = -log π_θ(y_t | y_<t)
    L_SFT = agg(l)       with the same `cfg.loss_agg` aggregation and `LossNormalizer` as the RL losses,

so ``token-mean`` gives sum_{i,t} m l / N_tok and ``seq-mean-token-mean`` gives every kept episode the same weight;
summing the loss over micro-batches gives the minibatch loss (see :mod:`agentgym.algos.aggregation`).

Rejection sampling (expert iteration, RFT; e.g. Zelikman et al., "STaR"; Yuan et al., "Scaling Relationship on
Learning Mathematical Reasoning with Large Language Models"): sample episodes, keep the best, fine-tune on them.
`selection_mask` is the pure function that decides which episodes to keep: episodes whose return R_i is at least
``min_reward`` (and, with ``success_only``, that succeeded), then the ``ceil(top_frac * n)`` highest returns among
the n episodes of each group (``per_group``) or of the whole collection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.aggregation import LossNormalizer, aggregate
from agentgym.algos.episodes import require_keys


def sft_loss(
    logprobs: Tensor, batch: TensorDict, normalizer: LossNormalizer, loss_agg: str = "token-mean"
) -> tuple[Tensor, dict[str, float]]:
    """The SFT loss of one micro-batch: ``agg(-log π_θ(y_t))`` over the policy tokens.

    Args:
        logprobs: [b, T] log π_θ of each token given its prefix (with gradient), aligned with ``input_ids``.
        batch: the micro-batch; reads ``loss_mask`` only.
        normalizer: ``loss_normalizer(minibatch, cfg)``, counted once for the minibatch this micro-batch is part of.
        loss_agg: the aggregation mode (see :data:`agentgym.algos.AGGREGATIONS`).

    Returns:
        ``(loss, metrics)``; metrics: ``sft/loss`` (the aggregated loss), ``sft/nll`` (mean negative logprob per
        policy token of this micro-batch) and ``sft/tokens`` (its policy tokens).
    """
    require_keys(batch, ("loss_mask",), "sft_loss trains on the policy tokens only")
    mask = batch["loss_mask"].bool()
    # masked_fill before the sum: padding and observation positions may hold anything (even inf) and contribute 0.
    nll = -logprobs.masked_fill(~mask, 0.0)
    seq_tokens = batch["seq_tokens"] if "seq_tokens" in batch.keys() else None
    loss = aggregate(nll, mask, loss_agg, normalizer, seq_tokens)
    n = int(mask.sum().item())
    metrics = {
        "sft/loss": float(loss.detach().item()),
        "sft/nll": float(nll.detach()[mask].mean().item()) if n else 0.0,
        "sft/tokens": float(n),
    }
    return loss, metrics


@dataclass
class SelectionConfig:
    """Which sampled episodes rejection sampling keeps."""

    top_frac: float = 1.0
    """keep the ceil(top_frac * n) highest-return episodes (1 keeps all that pass the filters below)"""
    min_reward: float | None = None
    """keep only episodes whose return is at least this (None: no threshold)"""
    success_only: bool = True
    """keep only successful episodes (the env's info["success"], else a positive return)"""
    per_group: bool = False
    """rank within each task's group of episodes (top_frac per task) instead of over the whole collection"""

    def __post_init__(self) -> None:
        if not 0.0 < self.top_frac <= 1.0:
            raise ValueError(f"top_frac must lie in (0, 1], got {self.top_frac}")


def selection_mask(
    returns: Tensor,
    group_ids: Tensor,
    cfg: SelectionConfig,
    success: Tensor | None = None,
) -> Tensor:
    """Which episodes to keep: a bool [n] mask over episodes with ``returns`` [n] and ``group_ids`` [n].

    Filters first (``min_reward``, ``success_only`` with ``success`` [n] bool), then ranks the survivors by return
    and keeps the top ``ceil(top_frac * n)`` of each group (``per_group``) or of all, where n counts every episode
    of the group (or collection), kept or not. Ties keep the earlier episode.
    """
    returns = returns.float()
    n = returns.shape[0]
    eligible = torch.ones(n, dtype=torch.bool)
    if cfg.min_reward is not None:
        eligible &= returns >= cfg.min_reward
    if cfg.success_only:
        eligible &= (success if success is not None else returns > 0).bool()
    keep = torch.zeros(n, dtype=torch.bool)
    pools = [group_ids == g for g in torch.unique(group_ids)] if cfg.per_group else [torch.ones(n, dtype=torch.bool)]
    for pool in pools:
        k = math.ceil(cfg.top_frac * int(pool.sum()))
        idx = torch.nonzero(pool & eligible).flatten()
        # A stable sort on -return ranks equal returns in their original order.
        order = torch.sort(-returns[idx], stable=True).indices
        keep[idx[order[:k]]] = True
    return keep


def select_episodes(episodes: Sequence[Any], cfg: SelectionConfig) -> list[Any]:
    """The episodes (:class:`~agentgym.rollout.batch.Episode`) that `selection_mask` keeps, in their original order."""
    if not episodes:
        return []
    returns = torch.tensor([ep.total_reward for ep in episodes], dtype=torch.float32)
    groups = torch.tensor([ep.group_id for ep in episodes], dtype=torch.long)
    success = torch.tensor([ep.success for ep in episodes], dtype=torch.bool)
    keep = selection_mask(returns, groups, cfg, success)
    return [ep for ep, k in zip(episodes, keep.tolist()) if k]
