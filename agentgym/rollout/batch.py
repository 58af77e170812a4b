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

The trainer adds, before the update: ``values`` and ``bootstrap_values`` ([B]: V after the row's last token, for
truncated episodes; PPO), ``ref_logprobs`` (KL), ``trainer_old_logprobs`` (TIS), then ``advantages`` (and
``returns``), and per minibatch ``seq_ids``/``seq_tokens`` (`agentgym.algos.sequence_keys`).

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
    """One row for a mergeable episode, else one row per turn.

    A turn's reward sits on its last policy token. A turn with an empty action has no token of its own: its reward
    goes on the latest policy token before it (the action that led there), or on the episode's first policy token
    when none came before, so token_rewards always sum to the episode return.
    """
    rows: list[_Row] = []
    if ep.is_mergeable():
        last = ep.turns[-1]
        ids = last.prompt_ids + last.action_ids
        rows.append(_Row(ids, [False] * len(ids), [0.0] * len(ids), [0] * len(ids), [0.0] * len(ids)))
        ends, start = [], 0
        for k, turn in enumerate(ep.turns):
            at = len(turn.prompt_ids)
            end = at + len(turn.action_ids)
            rows[0].turn_ids[start:end] = [k] * (end - start)
            rows[0].loss[at:end] = [True] * (end - at)
            rows[0].logprobs[at:end] = turn.logprobs
            ends.append((0, end - 1) if end > at else None)
            start = end
    else:
        ends = []
        for k, turn in enumerate(ep.turns):
            ids = turn.prompt_ids + turn.action_ids
            n, a = len(turn.prompt_ids), len(turn.action_ids)
            rows.append(_Row(ids, [False] * n + [True] * a, [0.0] * n + list(turn.logprobs), [k] * len(ids),
                             [0.0] * len(ids)))
            ends.append((len(rows) - 1, len(ids) - 1) if a else None)
    pending = 0.0  # rewards of empty turns before the first policy token
    where = None
    for turn, end in zip(ep.turns, ends):
        if end is not None:
            where = end
            if pending:
                rows[end[0]].rewards[end[1]] += pending
                pending = 0.0
        if where is None:
            pending += turn.reward
        else:
            rows[where[0]].rewards[where[1]] += turn.reward
    return rows


def to_batch(episodes: Sequence[Episode], pad_id: int = 0) -> tuple[TensorDict, dict[str, float]]:
    """Turn episodes into the training batch (see the module docstring), and aggregation stats.

    A turn whose action is empty contributes no policy token; its reward lands on the episode's latest earlier
    policy token (see `_rows`), so ``token_rewards`` sum to ``episode_return`` whenever the episode has a policy
    token.
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


def length_buckets(batch: TensorDict, rows_per_micro: int, tokens_per_micro: int = 0) -> list[torch.Tensor]:
    """Split ``batch``'s rows into micro-batches of up to ``rows_per_micro`` rows of similar length, and with
    ``tokens_per_micro`` > 0 of at most that many padded tokens (rows x longest row).

    Rows of one episode (same episode_id and agent_id) stay in one micro-batch (a sequence-level loss such as GSPO's
    needs all of an episode's tokens at once); an episode larger than the limits gets a micro-batch of its own. Episodes go longest first, so each micro-batch, cut to its longest row (`trim`), carries little
    padding. Returns row-index tensors that cover every row once.
    """
    if rows_per_micro < 1:
        raise ValueError(f"rows_per_micro must be >= 1, got {rows_per_micro}")
    n = batch.batch_size[0]
    if n == 0:
        return []
    lengths = batch["attention_mask"].sum(-1)
    if "episode_id" in batch.keys():
        agent = batch["agent_id"] if "agent_id" in batch.keys() else torch.zeros_like(batch["episode_id"])
        _, episode = torch.unique(torch.stack([batch["episode_id"], agent], 1), dim=0, return_inverse=True)
    else:
        episode = torch.arange(n)
    num = int(episode.max()) + 1
    longest = torch.zeros(num, dtype=lengths.dtype).scatter_reduce(0, episode, lengths, reduce="amax")
    first = torch.full((num,), n, dtype=torch.long).scatter_reduce(0, episode, torch.arange(n), reduce="amin")
    # Longest first; ties keep the batch's order (first row of each episode).
    order = sorted(range(num), key=lambda e: (-int(longest[e]), int(first[e])))
    rows_of = [[] for _ in range(num)]
    for r, e in enumerate(episode.tolist()):
        rows_of[e].append(r)
    out, current, width = [], [], 0
    for e in order:
        rows = len(current) + len(rows_of[e])
        too_many = rows > rows_per_micro or (tokens_per_micro > 0 and rows * width > tokens_per_micro)
        if current and too_many:
            out.append(torch.tensor(current, dtype=torch.long))
            current = []
        if not current:
            width = int(longest[e])  # longest first: the first episode of a micro-batch sets its width
        current += rows_of[e]
    if current:
        out.append(torch.tensor(current, dtype=torch.long))
    return out


def trim(batch: TensorDict) -> TensorDict:
    """``batch`` with the columns past its longest row cut off (every [B, T] key; right padding only)."""
    mask = batch["attention_mask"]
    width = int(mask.sum(-1).max()) if mask.numel() else 0
    if width >= mask.shape[1]:
        return batch
    out = {}
    for key, value in batch.items():
        if value.dim() >= 2 and value.shape[1] == mask.shape[1]:
            value = value[:, :width]
        out[key] = value
    return TensorDict(out, batch_size=batch.batch_size)


def episode_record(ep: Episode, iteration: int) -> dict[str, Any]:
    """An episode as a JSON-able dict: every turn's context, sampled ids, logprobs and reward."""
    return {
        "iteration": iteration,
        "episode_id": ep.episode_id,
        "group_id": ep.group_id,
        "agent_id": ep.agent_id,
        "return": ep.total_reward,
        "success": ep.success,
        "terminated": ep.terminated,
        "truncated": ep.truncated,
        "turns": [
            {
                "prompt_ids": t.prompt_ids,
                "action_ids": t.action_ids,
                "logprobs": t.logprobs,
                "reward": t.reward,
                "finish_reason": t.finish_reason,
            }
            for t in ep.turns
        ],
        "info": scalar_info(ep.info),
    }


def scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of an episode's info (strings, numbers, booleans, None)."""
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
