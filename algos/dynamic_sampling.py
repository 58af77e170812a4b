"""DAPO's dynamic sampling, and whether a minibatch carries any learning signal at all.

A group whose episodes all earned the same return has zero advantage under any group baseline, so it adds no
gradient but still dilutes the loss normalizers (Yu et al., "DAPO"). DAPO therefore over-samples: it keeps drawing
tasks and keeps only groups with different returns until the batch holds the asked-for number of groups (at most
``max_num_gen_batches`` draws). The trainer does the same (`informative_groups` picks the groups of each draw,
``AlgoConfig.max_sampling_rounds`` caps the draws); `filter_groups` then drops what is still uninformative.

A minibatch whose advantages are all exactly 0 and whose loss has no other term (`has_learning_signal` False) gives
a zero gradient; the trainer does not step the optimizer on it, since AdamW would still move the weights by its
leftover first moment (``m_t = β1 m_{t-1}``: each such step repeats about β1 times the last real update).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from tensordict import TensorDict

from agentgym.algos.config import AlgoConfig
from agentgym.algos.episodes import EpisodeIndex, require_keys


def has_learning_signal(minibatch: TensorDict, cfg: AlgoConfig) -> bool:
    """False when the minibatch's loss has a zero gradient: every advantage is 0 and the loss has no term that
    does not go through the advantages (entropy bonus, KL in the loss, a value head). Always True with
    ``cfg.skip_without_signal`` off (for ablations and like-for-like timing against trainers that always step)."""
    if cfg.loss_without_advantages or not cfg.skip_without_signal:
        return True
    require_keys(minibatch, ("advantages", "loss_mask"), "the learning signal is in the advantages")
    mask = minibatch["loss_mask"].bool()
    return bool((minibatch["advantages"][mask] != 0).any())


def informative_groups(returns: list[tuple[Hashable, float]], atol: float = 1e-6) -> list[Hashable]:
    """The groups, in order of first appearance, whose episodes' returns differ by more than `atol`.

    `returns` holds one ``(group_key, episode_return)`` per episode. A group of one is never informative.
    """
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    for key, r in returns:
        lo[key] = min(lo.get(key, r), r)
        hi[key] = max(hi.get(key, r), r)
    return [key for key in lo if hi[key] - lo[key] > atol]


def filter_groups(batch: TensorDict, cfg: AlgoConfig, atol: float = 1e-6) -> tuple[TensorDict, int]:
    """Keep the rows of groups whose episode returns differ; return (filtered batch, number of groups dropped).

    A group is dropped when max - min of its episodes' episode_return is <= `atol` (a group of one always is).
    Returns (batch, 0) unchanged unless cfg.dynamic_sampling. Call it before `shape_rewards`, so that KL
    penalties do not make equal outcomes look different.
    """
    if not cfg.dynamic_sampling:
        return batch, 0
    require_keys(batch, ("episode_return", "group_id", "episode_id"), "filter_groups compares returns per group")
    episodes = EpisodeIndex.from_batch(batch, cfg.group_by_agent)
    returns = episodes.episode_values(batch["episode_return"].float(), "episode_return")
    group_max = returns.new_full((episodes.num_groups,), -torch.inf).scatter_reduce(
        0, episodes.episode_group, returns, reduce="amax")
    group_min = returns.new_full((episodes.num_groups,), torch.inf).scatter_reduce(
        0, episodes.episode_group, returns, reduce="amin")
    keep_group = (group_max - group_min) > atol
    keep_rows = episodes.to_rows(keep_group[episodes.episode_group])
    dropped = int((~keep_group).sum().item())
    return batch[keep_rows], dropped
