"""DAPO's dynamic sampling: drop the groups whose episodes all earned the same return.

Such a group has zero advantage under any group baseline, so it adds no gradient but still dilutes the loss
normalizers (Yu et al., "DAPO"). The trainer can sample more tasks until the batch is full again.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from agentgym.algos.config import AlgoConfig
from agentgym.algos.episodes import EpisodeIndex, require_keys


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
