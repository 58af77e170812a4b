"""Werewolf as a PettingZoo ``AECEnv`` over token ids (needs ``pettingzoo``, an optional dependency).

Agents are the player names (``player1`` ...). ``observe(agent)`` is the agent's whole context so far as token ids
(``np.int64``): what it has read and written, followed by what it has not read yet. ``step(action)`` takes the token
ids the selected agent sampled. Players killed in the game stay in ``agents`` (they get the final team reward) but
are never selected until the game ends; then every agent is terminated (truncated when a context overflowed) and
is stepped with ``None`` to leave, as PettingZoo expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

try:
    from pettingzoo import AECEnv
except ImportError as err:  # pragma: no cover - exercised only without pettingzoo
    raise ImportError(
        "agentgym.envs.werewolf.pettingzoo needs pettingzoo; install it with `pip install pettingzoo`"
    ) from err

from agentgym.envs.werewolf.env import WerewolfEnv


class TokenIdsSpace(spaces.Space):
    """Variable-length 1-D ``np.int64`` arrays of ids in ``[0, vocab_size)``; samples have 1 to ``max_sample_len``
    ids."""

    def __init__(self, vocab_size: int, max_sample_len: int = 32, seed: int | None = None):
        if vocab_size <= 0 or max_sample_len <= 0:
            raise ValueError(f"vocab_size and max_sample_len must be positive, got {vocab_size}, {max_sample_len}")
        super().__init__(shape=None, dtype=np.int64, seed=seed)
        self.vocab_size = int(vocab_size)
        self.max_sample_len = int(max_sample_len)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        """Random ids of random length (masks are not supported)."""
        if mask is not None or probability is not None:
            raise ValueError("TokenIdsSpace.sample takes no mask or probability")
        length = int(self.np_random.integers(1, self.max_sample_len + 1))
        return self.np_random.integers(0, self.vocab_size, size=length, dtype=np.int64)

    def contains(self, x: Any) -> bool:
        if not isinstance(x, np.ndarray) or x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
            return False
        return bool(x.size == 0 or (x.min() >= 0 and x.max() < self.vocab_size))

    def __repr__(self) -> str:
        return f"TokenIdsSpace({self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenIdsSpace) and other.vocab_size == self.vocab_size


class WerewolfAECEnv(AECEnv):
    """A PettingZoo AEC view of :class:`~agentgym.envs.werewolf.env.WerewolfEnv` (every seat an agent).

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        render_mode: ``None`` or ``"ansi"`` (``render()`` returns the public events so far as text).
        env_kwargs: passed to :class:`WerewolfEnv` (``config``, ``max_context_tokens``, rule overrides);
            ``scripted`` is not accepted, since PettingZoo's agents must be the same in every game.
    """

    metadata = {"name": "werewolf_v0", "render_modes": ["ansi"], "is_parallelizable": False}

    def __init__(self, tokenizer: Any, render_mode: str | None = None, **env_kwargs: Any):
        super().__init__()
        if env_kwargs.get("scripted") is not None:
            raise ValueError("the PettingZoo view seats an agent in every seat; drop `scripted`")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.env = WerewolfEnv(tokenizer, **env_kwargs)
        self.render_mode = render_mode
        self.possible_agents = list(self.env.possible_agents)
        self._obs_spaces = {a: TokenIdsSpace(self.env.vocab_size) for a in self.possible_agents}
        self._act_spaces = {a: TokenIdsSpace(self.env.vocab_size) for a in self.possible_agents}
        self.agents: list[str] = []

    def observation_space(self, agent: str) -> TokenIdsSpace:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> TokenIdsSpace:
        return self._act_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        agent, _, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos: dict[str, dict] = {a: {} for a in self.agents}
        self._skip_agent_selection = None
        self.agent_selection = agent if agent is not None else self.agents[0]
        self.infos[self.agent_selection] = self._public_info(info)

    def observe(self, agent: str) -> np.ndarray:
        """The agent's whole context: ids read and written so far, then those not read yet."""
        return np.concatenate([self.env.context_ids(agent), self.env.observe(agent)]).astype(np.int64)

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        nxt, _, rewards, terminated, truncated, info = self.env.step(action)
        self.rewards = {a: float(rewards.get(a, 0.0)) for a in self.agents}
        if terminated or truncated:
            final = {k: info[k] for k in ("winner", "roles", "end_reason", "truncation_reason") if k in info}
            for a in self.agents:
                self.terminations[a] = bool(terminated)
                self.truncations[a] = bool(truncated)
                self.infos[a] = dict(final)
            self._accumulate_rewards()
            self._deads_step_first()
            return
        self.infos[agent] = {k: info[k] for k in ("valid", "error", "defaulted") if k in info}
        self.agent_selection = nxt
        self.infos[nxt] = self._public_info(info)
        self._accumulate_rewards()

    @staticmethod
    def _public_info(info: dict) -> dict:
        return {k: info[k] for k in ("kind", "attempt", "day") if k in info}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(e.text for e in self.env.game.events if e.text and e.audience is None)

    def close(self) -> None:
        self.env.close()


def env(tokenizer: Any, **kwargs: Any) -> WerewolfAECEnv:
    """A :class:`WerewolfAECEnv` (PettingZoo's usual constructor name)."""
    return WerewolfAECEnv(tokenizer, **kwargs)
