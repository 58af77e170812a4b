"""Rolls out groups of episodes: token envs on one side, an engine on the other.

Each group is ``group_size`` copies of one task (the same reset seed); all envs waiting for an action are batched
into one ``engine.generate`` call per round, and every episode keeps its engine KV cache between turns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from agentgym.rollout.batch import Episode, Turn
from agentgym.core import TokenEnv
from agentgym.vector import TokenVectorEnv


class Collector:
    """Collects :class:`~agentgym.rollout.batch.Episode` groups from token envs with an engine.

    Args:
        env_fn: builds one env (called ``num_groups * group_size`` times, once).
        engine: an :class:`~agentgym.engines.Engine`.
        params: the engine's sampling parameters (``n`` is forced to 1; ``stop_token_ids`` default to the env's).
        num_groups: tasks per collection.
        group_size: episodes per task.
        num_threads: step envs in a thread pool of this size (0: in this thread).
        max_turns: a safety cap on turns per episode, beyond the env's own limits.

    Failures: an episode keeps its env's last step info in ``Episode.info``, so one that failed says why in
    ``info["error"]`` (e.g. an agent's exception); a task whose episode ended before the policy's first turn makes
    no Episode and is listed, with its ``"error"``, in :attr:`last_unplayed`.
    """

    def __init__(
        self,
        env_fn: Callable[[], TokenEnv],
        engine: Any,
        params: Any,
        num_groups: int,
        group_size: int,
        num_threads: int = 0,
        max_turns: int = 64,
    ):
        if num_groups < 1 or group_size < 1:
            raise ValueError(f"num_groups and group_size must be >= 1, got {num_groups} and {group_size}")
        self.engine = engine
        self.num_groups, self.group_size, self.max_turns = num_groups, group_size, max_turns
        self.venv = TokenVectorEnv([env_fn] * (num_groups * group_size), num_threads=num_threads)
        stops = getattr(self.venv.envs[0], "stop_token_ids", None)
        if params.stop_token_ids is None and stops:
            params = dataclasses.replace(params, stop_token_ids=sorted(stops))
        self.params = dataclasses.replace(params, n=1)
        self._next_episode = 0
        self.last_stats: dict[str, float] = {}
        self.last_unplayed: list[dict] = []
        """The tasks of the last collection whose episode ended before the policy's first turn: each ``{"seed",
        "error", ...}``, the task's scalar reset info and ``"error"``, why it ended (always a string)."""

    def collect(self, seed: int) -> list[Episode]:
        """One group of episodes per task; task ``g`` is the env reset with seed ``seed + g``.

        Sampling is seeded from ``seed`` too, so a collection is reproducible.
        """
        n = self.venv.num_envs
        seeds = [seed + i // self.group_size for i in range(n)]
        obs, infos = self.venv.reset(seed=seeds)
        base = self._next_episode
        self._next_episode += n
        contexts = [list(map(int, o)) for o in obs]
        turns: list[list[Turn]] = [[] for _ in range(n)]
        episodes: list[Episode | None] = [None] * n
        keys = [f"episode-{base + i}" for i in range(n)]
        # An agent that ended before its first policy call has nothing to train on.
        over = [i for i in range(n) if infos[i].get("episode_over")]
        ends = self.venv.step({i: [] for i in over}) if over else {}
        waiting = [i for i in range(n) if i not in over]
        mismatches: dict[str, int] = {}
        round_ = 0
        try:
            while waiting:
                params = dataclasses.replace(self.params, seed=seed * 1_000 + round_)
                outs = self.engine.generate([contexts[i] for i in waiting], params, cache_keys=[keys[i] for i in waiting])
                for i, out in zip(waiting, outs):
                    give = getattr(self.venv.envs[i], "set_action_logprobs", None)
                    if give is not None:  # an agent program gets the logprobs in its response
                        give(out[0].logprobs)
                results = self.venv.step({i: out[0].token_ids for i, out in zip(waiting, outs)})
                still = []
                for i, out in zip(waiting, outs):
                    c, res = out[0], results[i]
                    turns[i].append(Turn(contexts[i], list(c.token_ids), list(c.logprobs), res.reward, c.finish_reason))
                    if res.info.get("context_reset"):  # the env rewrote the context (an agent program may)
                        contexts[i] = list(map(int, res.obs))
                        why = str(res.info.get("mismatch", "other"))
                        mismatches[why] = mismatches.get(why, 0) + 1
                    else:
                        contexts[i] = contexts[i] + list(c.token_ids) + list(map(int, res.obs))
                    capped = len(turns[i]) >= self.max_turns
                    if res.done or capped:
                        episodes[i] = Episode(
                            turns[i],
                            group_id=seed + i // self.group_size,
                            episode_id=base + i,
                            terminated=res.terminated,
                            truncated=res.truncated or (capped and not res.done),
                            info={**_task_info(infos[i]), **res.info},
                        )
                        self.engine.release(keys[i])
                    else:
                        still.append(i)
                waiting = still
                round_ += 1
        finally:
            for i in waiting:
                self.engine.release(keys[i])
        self.last_stats = {"failed_episodes": float(len(over))}
        # Tasks whose episode ended before the policy's first turn (they make no Episode): an evaluation counts them,
        # and a trainer left with none to train on says why.
        self.last_unplayed = [_unplayed(seeds[i], infos[i], ends[i].info) for i in over]
        self.last_stats.update({f"unmerged/{k}": float(v) for k, v in mismatches.items()})
        return [ep for ep in episodes if ep is not None]

    def close(self) -> None:
        self.venv.close()


def _unplayed(seed: int, reset_info: dict, end_info: dict) -> dict:
    """The record of a task whose episode ended before the policy's first turn, with the reason as ``"error"``."""
    error = reset_info.get("error") or end_info.get("error") or (
        "the episode ended before the policy's first turn, without an error (an agent that returned without "
        "calling the LLM, say)")
    record = {"seed": seed, **_task_info(reset_info), "error": str(error)}
    refused = end_info.get("refused_calls") or reset_info.get("refused_calls")
    if refused:
        record["refused_calls"] = list(refused)
    return record


def _task_info(reset_info: dict) -> dict:
    """What the reset told about the task (e.g. a question's difficulty), kept with the episode: an episode cut short
    by the context limit still says which task it was. Text views and turn counters are left out."""
    skip = ("text", "messages", "turn", "context_tokens")
    return {k: v for k, v in reset_info.items() if k not in skip and isinstance(v, (str, int, float, bool))}


def context_limit(max_context_tokens: int, engine: Any) -> int:
    """The longest context an episode may reach: ``max_context_tokens``, or less where the engine's model is
    shorter (the env truncates before the engine would refuse the context)."""
    return min(max_context_tokens, getattr(engine, "max_model_len", None) or max_context_tokens)


def env_factory(env: str, env_kwargs: dict[str, Any], tokenizer: Any, engine: Any,
                max_context_tokens: int) -> Callable[[], TokenEnv]:
    """Builds one env of a run: registered id ``env`` with ``env_kwargs``, truncating at ``max_context_tokens``;
    envs that declare an ``engine`` keyword get the run's engine."""
    from agentgym.registration import make

    kwargs = dict(env_kwargs)
    return lambda: make(env, tokenizer=tokenizer, max_context_tokens=max_context_tokens, engine=engine, **kwargs)
