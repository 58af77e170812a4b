"""Episodes as the collector records them, and the TensorDict batch the algorithms train on.

The keys of the batch are the contract between collector, algorithms and trainer (docs/CONTRACTS.md):

========================  ===========  ===========================================================================
key                       shape        meaning
========================  ===========  ===========================================================================
``input_ids``             [B, T] long  the row's tokens, right-padded with ``pad_id``
``attention_mask``        [B, T] bool  True on real tokens
``loss_mask``             [B, T] bool  True exactly on tokens the policy sampled (the trained tokens)
``old_logprobs``          [B, T] float the engine's logprob of each policy token as it was sampled, 0 elsewhere
``turn_ids``              [B, T] long  turn index of each token (turn k: its observation and its action); -1 pad
``token_rewards``         [B, T] float each turn's reward on that turn's last policy token
``episode_return``        [B] float    the sum of the episode's rewards
``group_id``              [B] long     rows of episodes of the same task share it (the GRPO group)
``episode_id``            [B] long     rows of one episode share it (an unmerged episode has one row per turn)
``agent_id``              [B] long     which agent of a multi-agent episode produced the row
``num_turns``             [B] long     turns in the episode
``truncated``             [B] bool     the episode was cut (context or turn limit) rather than finished
========================  ===========  ===========================================================================

A per-token value at position t belongs to token ``input_ids[:, t]``; its logprob comes from the logits at t - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tensordict import TensorDict


@dataclass
class Turn:
    """One policy turn: the full context the engine saw, what it sampled, and the reward of the step."""

    prompt_ids: list[int]
    """The whole context given to the engine for this turn."""
    action_ids: list[int]
    """The ids the engine sampled."""
    logprobs: list[float]
    """The engine's logprob of each sampled id (see :mod:`agentgym.engines`)."""
    reward: float = 0.0
    """The reward the environment returned for this action."""
    finish_reason: str = "stop"


@dataclass
class Episode:
    """One episode of one agent: its turns in order, and how it ended."""

    turns: list[Turn]
    group_id: int = 0
    episode_id: int = 0
    agent_id: int = 0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def success(self) -> bool:
        """``info["success"]`` when the env reports it, else a positive return."""
        return bool(self.info.get("success", self.total_reward > 0))

    def is_mergeable(self) -> bool:
        """Every turn's context extends the previous turn's context plus its action, token for token."""
        for prev, cur in zip(self.turns, self.turns[1:]):
            before = prev.prompt_ids + prev.action_ids
            if cur.prompt_ids[: len(before)] != before:
                return False
        return True


@dataclass
class _Row:
    ids: list[int]
    loss: list[bool]
    logprobs: list[float]
    turn_ids: list[int]
    rewards: list[float]


def _rows(ep: Episode) -> list[_Row]:
    """One row for a mergeable episode, else one row per turn."""
    if ep.is_mergeable():
        last = ep.turns[-1]
        ids = last.prompt_ids + last.action_ids
        row = _Row(ids, [False] * len(ids), [0.0] * len(ids), [0] * len(ids), [0.0] * len(ids))
        start = 0
        for k, turn in enumerate(ep.turns):
            at = len(turn.prompt_ids)
            end = at + len(turn.action_ids)
            row.turn_ids[start:end] = [k] * (end - start)
            row.loss[at:end] = [True] * (end - at)
            row.logprobs[at:end] = turn.logprobs
            if end > at:
                row.rewards[end - 1] += turn.reward
            start = end
        return [row]
    rows = []
    for k, turn in enumerate(ep.turns):
        ids = turn.prompt_ids + turn.action_ids
        n, a = len(turn.prompt_ids), len(turn.action_ids)
        rewards = [0.0] * len(ids)
        if a:
            rewards[-1] = turn.reward
        rows.append(_Row(ids, [False] * n + [True] * a, [0.0] * n + list(turn.logprobs), [k] * len(ids), rewards))
    return rows


def to_batch(episodes: Sequence[Episode], pad_id: int = 0) -> tuple[TensorDict, dict[str, float]]:
    """Turn episodes into the training batch (see the module docstring), and aggregation stats.

    A turn whose action is empty contributes no policy token (and its reward goes to the episode return only).
    Returns ``(batch, stats)``; ``stats["unmerged_episodes"]`` counts multi-turn episodes split into per-turn rows.
    """
    if not episodes:
        raise ValueError("no episodes to batch")
    rows: list[_Row] = []
    per_row: list[tuple[Episode, int]] = []
    unmerged = 0
    for ep in episodes:
        if not ep.turns:
            raise ValueError(f"episode {ep.episode_id} has no turns")
        for t in ep.turns:
            if len(t.logprobs) != len(t.action_ids):
                raise ValueError(
                    f"episode {ep.episode_id}: {len(t.action_ids)} action ids but {len(t.logprobs)} logprobs"
                )
        ep_rows = _rows(ep)
        unmerged += len(ep_rows) > 1
        rows += ep_rows
        per_row += [(ep, i) for i in range(len(ep_rows))]
    B, T = len(rows), max(len(r.ids) for r in rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.bool)
    loss_mask = torch.zeros(B, T, dtype=torch.bool)
    old_logprobs = torch.zeros(B, T)
    turn_ids = torch.full((B, T), -1, dtype=torch.long)
    token_rewards = torch.zeros(B, T)
    for i, r in enumerate(rows):
        n = len(r.ids)
        input_ids[i, :n] = torch.tensor(r.ids, dtype=torch.long)
        attention_mask[i, :n] = True
        loss_mask[i, :n] = torch.tensor(r.loss, dtype=torch.bool)
        old_logprobs[i, :n] = torch.tensor(r.logprobs, dtype=torch.float32)
        turn_ids[i, :n] = torch.tensor(r.turn_ids, dtype=torch.long)
        token_rewards[i, :n] = torch.tensor(r.rewards, dtype=torch.float32)
    eps = [ep for ep, _ in per_row]
    batch = TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "old_logprobs": old_logprobs,
            "turn_ids": turn_ids,
            "token_rewards": token_rewards,
            "episode_return": torch.tensor([ep.total_reward for ep in eps], dtype=torch.float32),
            "group_id": torch.tensor([ep.group_id for ep in eps], dtype=torch.long),
            "episode_id": torch.tensor([ep.episode_id for ep in eps], dtype=torch.long),
            "agent_id": torch.tensor([ep.agent_id for ep in eps], dtype=torch.long),
            "num_turns": torch.tensor([len(ep.turns) for ep in eps], dtype=torch.long),
            "truncated": torch.tensor([ep.truncated for ep in eps], dtype=torch.bool),
        },
        batch_size=[B],
    )
    multi = sum(len(ep.turns) > 1 for ep in episodes)
    return batch, {"unmerged_episodes": float(unmerged), "multi_turn_episodes": float(multi)}
