"""Multi-agent rollouts with selective optimization: a policy map decides who plays each seat, and only the seats
of trainable policies make training rows.

A multi-agent env here is turn-based (PettingZoo's AEC style) and token-level:
``reset(seed) -> (agent, obs, info)``, ``step(ids) -> (agent, obs, rewards, terminated, truncated, info)`` where
``agent`` is the seat to act next and ``obs`` the ids appended to *its* context; ``context_ids(agent)`` is what the
seat has read and written so far; ``rewards`` maps every seat to what it earned during the step. Scripted seats are
played inside the env; the policy map covers the LLM seats.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from agentgym.agents.context import trainable_filter
from agentgym.rollout.batch import Episode, Turn

PolicyOf = Callable[[Any, str], str]
"""``policy_of(env, agent) -> policy name``: e.g. by role, ``lambda env, a: env.roles[a]``."""


class MultiAgentCollector:
    """Plays ``num_groups * group_size`` games at once; every round, the acting seats of all running games are
    batched per policy into one ``generate`` call.

    Args:
        env_fn: builds one multi-agent env.
        policies: policy name -> engine that answers that policy's seats.
        policy_of: which policy plays a seat (called at each reset).
        trainable: names (a set) or a regex of the policies whose seats make training rows.
        params: sampling parameters (``n`` forced to 1, stop tokens default to the env's).
        num_groups: tasks (deals) per collection; group ``g`` resets with seed ``seed + g``.
        group_size: games per task.
        max_turns: a safety cap on steps per game.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        policies: Mapping[str, Any],
        policy_of: PolicyOf,
        trainable: str | set[str] | None,
        params: Any,
        num_groups: int,
        group_size: int,
        max_turns: int = 1_000,
    ):
        if num_groups < 1 or group_size < 1:
            raise ValueError(f"num_groups and group_size must be >= 1, got {num_groups} and {group_size}")
        if not policies:
            raise ValueError("policies is empty: map at least one policy name to an engine")
        self.envs = [env_fn() for _ in range(num_groups * group_size)]
        self.policies = dict(policies)
        self.policy_of = policy_of
        self.is_trainable = trainable_filter(trainable)
        stops = sorted(getattr(self.envs[0], "stop_token_ids", ()) or ())
        if params.stop_token_ids is None and stops:
            params = dataclasses.replace(params, stop_token_ids=stops)
        self.params = dataclasses.replace(params, n=1)
        self.num_groups, self.group_size, self.max_turns = num_groups, group_size, max_turns
        self._next_episode = 0
        self.last_stats: dict[str, float] = {}

    def collect(self, seed: int) -> list[Episode]:
        """Episodes (one per trainable seat per game) of one collection, seeded from ``seed``."""
        n = len(self.envs)
        pending: dict[int, tuple[str, list[int]]] = {}
        owner: list[dict[str, str]] = []
        turns: list[dict[str, list[Turn]]] = []
        for i, env in enumerate(self.envs):
            agent, obs, _ = env.reset(seed=seed + i // self.group_size)
            seats = getattr(env, "agents", None) or env.possible_agents  # LLM seats; scripted ones play inside
            owner.append({a: self.policy_of(env, a) for a in seats})
            unknown = {p for p in owner[-1].values() if p not in self.policies}
            if unknown:
                raise KeyError(f"policy_of returned {sorted(unknown)}, not in policies {sorted(self.policies)}")
            turns.append({a: [] for a in env.possible_agents})
            if agent is not None:
                pending[i] = (agent, env.context_ids(agent).tolist() + obs.tolist())
        base = self._next_episode
        self._next_episode += n
        finals: dict[int, tuple[bool, bool, dict]] = {}
        key = lambda i, a: f"ma-{base + i}-{a}"  # noqa: E731
        steps = [0] * n
        round_ = 0
        sampled: dict[str, int] = {}  # tokens each policy generated, trained seats or not
        try:
            while pending:
                by_policy: dict[str, list[int]] = {}
                for i, (agent, _) in pending.items():
                    by_policy.setdefault(owner[i][agent], []).append(i)
                params = dataclasses.replace(self.params, seed=seed * 1_000 + round_)
                actions: dict[int, Any] = {}
                for name, games in by_policy.items():
                    outs = self.policies[name].generate(
                        [pending[i][1] for i in games], params, cache_keys=[key(i, pending[i][0]) for i in games]
                    )
                    actions.update({i: out[0] for i, out in zip(games, outs)})
                    sampled[name] = sampled.get(name, 0) + sum(len(out[0].token_ids) for out in outs)
                nxt: dict[int, tuple[str, list[int]]] = {}
                for i, c in actions.items():
                    agent, context = pending[i]
                    turns[i][agent].append(Turn(context, list(c.token_ids), list(c.logprobs), 0.0, c.finish_reason))
                    env = self.envs[i]
                    agent2, obs, rewards, term, trunc, info = env.step(c.token_ids)
                    for a, r in rewards.items():
                        if r and turns[i][a]:
                            turns[i][a][-1].reward += float(r)
                    steps[i] += 1
                    if agent2 is None or term or trunc or steps[i] >= self.max_turns:
                        finals[i] = (term, trunc or agent2 is not None, info)
                        for a, name in owner[i].items():
                            self.policies[name].release(key(i, a))
                    else:
                        nxt[i] = (agent2, env.context_ids(agent2).tolist() + obs.tolist())
                pending = nxt
                round_ += 1
        finally:
            for i, (agent, _) in pending.items():
                self.policies[owner[i][agent]].release(key(i, agent))
        episodes: list[Episode] = []
        rows_by_policy: dict[str, int] = {}
        for i, env in enumerate(self.envs):
            term, trunc, info = finals.get(i, (False, True, {}))
            for k, a in enumerate(env.possible_agents):
                name = owner[i].get(a)
                if name is None or not turns[i][a] or not self.is_trainable(name):
                    continue
                success = _seat_success(info, a)
                episodes.append(
                    Episode(
                        turns[i][a], group_id=seed + i // self.group_size, episode_id=(base + i) * 64 + k,
                        agent_id=k, terminated=term, truncated=trunc,
                        info={"policy": name, "agent": a, "success": success,
                              **{x: info[x] for x in ("winner", "end_reason") if x in info}},
                    )
                )
                rows_by_policy[name] = rows_by_policy.get(name, 0) + 1
        self.last_stats = {f"episodes/{p}": float(c) for p, c in rows_by_policy.items()}
        self.last_stats.update({f"sampled_tokens/{p}": float(c) for p, c in sampled.items()})
        self.last_stats["sampled_tokens"] = float(sum(sampled.values()))
        return episodes

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _seat_success(info: dict, agent: str) -> bool:
    teams, winner = info.get("teams"), info.get("winner")
    if isinstance(teams, dict) and winner is not None:
        return teams.get(agent) == winner
    return bool(info.get("returns", {}).get(agent, 0) > 0)
