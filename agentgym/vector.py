"""Several token-level environments stepped together.

Observations have different lengths from env to env and from turn to turn, so they are returned as lists rather
than stacked arrays (gymnasium's ``VectorEnv`` assumes batchable spaces). Actions are given for any subset of the
envs, so a collector steps only those whose policy turn has been generated.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from agentgym.core import TokenEnv, TokenIds


@dataclass
class StepResult:
    """One env's outcome of a vector step. After an autoreset, ``obs``/``info`` are the final ones of the episode
    that ended, and ``reset_obs``/``reset_info`` start the next."""

    obs: TokenIds
    reward: float
    terminated: bool
    truncated: bool
    info: dict
    reset_obs: TokenIds | None = None
    reset_info: dict | None = None

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class TokenVectorEnv:
    """``len(env_fns)`` token envs, stepped together, optionally in a thread pool.

    Args:
        env_fns: callables that each build one env.
        autoreset: reset an env as soon as its episode ends, returning the new prompt in the ``StepResult``.
        num_threads: 0 steps the envs one after another; > 0 uses a pool of that many threads (for envs whose
            step waits on I/O, such as a database or an agent program).
    """

    def __init__(self, env_fns: Sequence[Callable[[], TokenEnv]], autoreset: bool = False, num_threads: int = 0):
        if not env_fns:
            raise ValueError("env_fns is empty: give at least one env constructor")
        self.envs: list[TokenEnv] = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.autoreset = autoreset
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 0 else None
        self._done = [False] * self.num_envs

    def _map(self, fn: Callable[[int], Any], indices: Sequence[int]) -> list[Any]:
        if self._pool is None:
            return [fn(i) for i in indices]
        return list(self._pool.map(fn, indices))

    def reset(
        self, seed: int | Sequence[int | None] | None = None, options: dict | None = None, indices: Sequence[int] | None = None
    ) -> tuple[list[TokenIds], list[dict]]:
        """Reset the envs at ``indices`` (default all). An int ``seed`` gives env ``i`` the seed ``seed + i``."""
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in idx]
        else:
            seeds = list(seed)
            if len(seeds) != len(idx):
                raise ValueError(f"got {len(seeds)} seeds for {len(idx)} envs")
        results = self._map(lambda k: self.envs[idx[k]].reset(seed=seeds[k], options=options), range(len(idx)))
        for i in idx:
            self._done[i] = False
        return [r[0] for r in results], [r[1] for r in results]

    def step(self, actions: Mapping[int, Any] | Sequence[Any]) -> dict[int, StepResult]:
        """Step the envs that have an action: ``{env_index: action_ids}`` (or a list, one action per env)."""
        if not isinstance(actions, Mapping):
            if len(actions) != self.num_envs:
                raise ValueError(f"got {len(actions)} actions for {self.num_envs} envs; pass a dict to step a subset")
            actions = dict(enumerate(actions))
        for i in actions:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} out of range [0, {self.num_envs})")

        def one(i: int) -> StepResult:
            obs, reward, term, trunc, info = self.envs[i].step(np.asarray(actions[i]))
            res = StepResult(obs, float(reward), term, trunc, info)
            if res.done and self.autoreset:
                res.reset_obs, res.reset_info = self.envs[i].reset()
            return res

        idx = list(actions)
        out = dict(zip(idx, self._map(one, idx)))
        for i, res in out.items():
            self._done[i] = res.done and not self.autoreset
        return out

    @property
    def waiting(self) -> list[int]:
        """Indices of envs whose episode is running and waiting for an action."""
        return [i for i, d in enumerate(self._done) if not d]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
