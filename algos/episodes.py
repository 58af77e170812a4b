"""Episodes and groups behind the rows of a batch, and the order of each episode's policy tokens.

A batch row is a whole episode when its turns could be merged, else one turn; rows of one episode share
`episode_id`. Baselines are computed over episodes (each counted once), then broadcast back to rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

REQUIRED_KEYS: tuple[str, ...] = (
    "loss_mask", "token_rewards", "turn_ids", "episode_return", "group_id", "episode_id")
"""batch keys every advantage computation reads (agent_id is optional, values only for GAE)"""


def require_keys(batch: TensorDict, keys: tuple[str, ...] | list[str], why: str) -> None:
    """Raise KeyError naming the batch keys in `keys` that are missing, and why they are needed."""
    missing = [k for k in keys if k not in batch.keys()]
    if missing:
        raise KeyError(
            f"batch lacks {missing} ({why}); it has {sorted(batch.keys())}. See docs/CONTRACTS.md for the batch keys."
        )


def _agent_ids(batch: TensorDict) -> Tensor:
    if "agent_id" in batch.keys():
        return batch["agent_id"].long()
    return torch.zeros(batch.batch_size[0], dtype=torch.long, device=batch["episode_id"].device)


@dataclass(frozen=True)
class PolicyTokens:
    """The policy tokens of a batch in episode order: by episode, then turn, then row, then position.

    Token n sits at batch position (rows[n], cols[n]) and is the slot[n]-th policy token of episode episode[n].
    `pack` turns a [B, T] tensor into an [E, L] one holding each episode's policy tokens in order (observation
    tokens squeezed out), `unpack` writes such a tensor back to [B, T] with zeros off the policy tokens.
    """

    rows: Tensor
    cols: Tensor
    episode: Tensor
    slot: Tensor
    lengths: Tensor
    shape: tuple[int, int]

    @property
    def max_length(self) -> int:
        return int(self.lengths.max().item()) if self.lengths.numel() else 0

    def valid(self) -> Tensor:
        """[E, L] bool: True where an episode has a policy token at that slot."""
        return torch.arange(self.max_length, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def pack(self, x: Tensor) -> Tensor:
        out = x.new_zeros(self.lengths.numel(), self.max_length)
        out[self.episode, self.slot] = x[self.rows, self.cols]
        return out

    def unpack(self, x: Tensor) -> Tensor:
        out = x.new_zeros(self.shape)
        out[self.rows, self.cols] = x[self.episode, self.slot]
        return out

    def last_positions(self) -> tuple[Tensor, Tensor, Tensor]:
        """(episodes, rows, cols) of the last policy token of every episode that has one."""
        is_last = self.slot == self.lengths[self.episode] - 1
        return self.episode[is_last], self.rows[is_last], self.cols[is_last]


@dataclass(frozen=True)
class EpisodeIndex:
    """Which episode each row belongs to and which group each episode belongs to.

    An episode is a distinct (episode_id, agent_id); a group is a distinct (group_id, agent_id) when
    `group_by_agent`, else a distinct group_id. Episodes are numbered 0..E-1, groups 0..G-1.
    """

    row_episode: Tensor
    """[B] episode number of each row"""
    episode_group: Tensor
    """[E] group number of each episode"""
    episode_first_row: Tensor
    """[E] the first row of each episode"""
    num_groups: int

    @property
    def num_episodes(self) -> int:
        return self.episode_group.numel()

    @classmethod
    def from_batch(cls, batch: TensorDict, group_by_agent: bool = True) -> EpisodeIndex:
        require_keys(batch, ("episode_id", "group_id"), "episodes and groups are read from them")
        agent = _agent_ids(batch)
        episode_key = torch.stack([batch["episode_id"].long(), agent], dim=1)
        _, row_episode = torch.unique(episode_key, dim=0, return_inverse=True)
        num_rows = row_episode.numel()
        num_episodes = int(row_episode.max().item()) + 1 if num_rows else 0
        rows = torch.arange(num_rows, device=row_episode.device)
        first_row = torch.full((num_episodes,), num_rows, dtype=torch.long, device=row_episode.device)
        first_row = first_row.scatter_reduce(0, row_episode, rows, reduce="amin")

        group = batch["group_id"].long()
        group_key = torch.stack([group, agent], dim=1) if group_by_agent else group[:, None]
        if not torch.equal(group_key, group_key[first_row][row_episode]):
            raise ValueError("rows of one episode (same episode_id and agent_id) carry different group_id values; "
                             "give every row of an episode its episode's group_id.")
        _, episode_group = torch.unique(group_key[first_row], dim=0, return_inverse=True)
        num_groups = int(episode_group.max().item()) + 1 if num_episodes else 0
        return cls(row_episode, episode_group, first_row, num_groups)

    # --- per-episode <-> per-row ---
    def to_rows(self, per_episode: Tensor) -> Tensor:
        """Broadcast an [E] tensor to the rows: [B]."""
        return per_episode[self.row_episode]

    def episode_sum(self, per_row: Tensor) -> Tensor:
        """Sum a [B] tensor over the rows of each episode: [E]."""
        out = per_row.new_zeros(self.num_episodes)
        return out.index_add(0, self.row_episode, per_row)

    def episode_values(self, per_row: Tensor, name: str) -> Tensor:
        """The per-row value that all rows of an episode share, as [E]; ValueError if the rows disagree."""
        per_episode = per_row[self.episode_first_row]
        if not torch.allclose(per_row, self.to_rows(per_episode), rtol=1e-5, atol=1e-6):
            raise ValueError(f"rows of one episode carry different {name} values; every row of an episode "
                             f"must hold the episode's {name}.")
        return per_episode

    # --- group statistics over episodes ---
    def group_size(self) -> Tensor:
        """[E] number of episodes in each episode's group."""
        counts = torch.bincount(self.episode_group, minlength=self.num_groups)
        return counts[self.episode_group]

    def group_sum(self, x: Tensor) -> Tensor:
        """[E] sum of the [E] tensor `x` over each episode's group."""
        sums = x.new_zeros(self.num_groups).index_add(0, self.episode_group, x)
        return sums[self.episode_group]

    def group_mean(self, x: Tensor) -> Tensor:
        """[E] mean of `x` over each episode's group."""
        return self.group_sum(x) / self.group_size().to(x.dtype)

    def group_std(self, x: Tensor) -> Tensor:
        """[E] sample standard deviation (Bessel-corrected) of `x` over each episode's group; 0 for a group of one."""
        n = self.group_size().to(x.dtype)
        centered = x - self.group_mean(x)
        var = self.group_sum(centered**2) / (n - 1).clamp(min=1)
        return var.sqrt()

    # --- policy tokens in episode order ---
    def policy_tokens(self, batch: TensorDict) -> PolicyTokens:
        """Each episode's policy tokens in order (turn, then row, then position), across its rows."""
        require_keys(batch, ("loss_mask", "turn_ids"), "policy tokens are ordered by them")
        mask = batch["loss_mask"].bool()
        num_rows, seq_len = mask.shape
        rows, cols = mask.nonzero(as_tuple=True)
        turns = batch["turn_ids"].long()[rows, cols].clamp(min=0)
        episode = self.row_episode[rows]
        num_turns = int(turns.max().item()) + 1 if turns.numel() else 1
        key = ((episode * num_turns + turns) * num_rows + rows) * seq_len + cols
        order = torch.argsort(key)
        rows, cols, episode = rows[order], cols[order], episode[order]
        lengths = torch.bincount(episode, minlength=self.num_episodes)
        starts = torch.cumsum(lengths, 0) - lengths
        slot = torch.arange(rows.numel(), device=rows.device) - starts[episode]
        return PolicyTokens(rows, cols, episode, slot, lengths, (num_rows, seq_len))
