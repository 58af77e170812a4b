"""The token-level, multi-turn environment API.

An LLM agent's loop is an environment whose observations and actions are token ids. ``reset`` returns the prompt;
every ``step`` takes the ids the policy sampled for its turn and returns the ids the environment appends to the
context (a tool result, another player's words, the next user message). Concatenating the first observation, the
first action, the second observation, ... gives the whole context the policy saw.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TokenIds = np.ndarray
"""A 1-D ``np.int64`` array of token ids."""


def token_space(vocab_size: int) -> spaces.Sequence:
    """The space of variable-length 1-D token-id arrays over a vocabulary of ``vocab_size`` ids."""
    return spaces.Sequence(spaces.Discrete(vocab_size), stack=True)


def as_token_ids(action: Any, vocab_size: int) -> TokenIds:
    """Validate ``action`` as a 1-D array of integer ids in ``[0, vocab_size)`` and return it as ``np.int64``.

    Raises:
        TypeError: the action is not integers.
        ValueError: the action is not 1-D, or holds ids outside the vocabulary (the message names them).
    """
    arr = np.asarray(action)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"action must be a 1-D array of integer token ids, got dtype {arr.dtype}; "
            "pass the ids the policy sampled, e.g. np.array([12, 7, 3])"
        )
    if arr.ndim != 1:
        raise ValueError(f"action must be a 1-D array of token ids, got shape {arr.shape}; pass one turn at a time")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        shown = ", ".join(f"{int(arr[i])} at position {int(i)}" for i in bad[:5])
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise ValueError(f"action holds token ids outside the vocabulary [0, {vocab_size}): {shown}{more}")
    return arr.astype(np.int64, copy=False)


class TokenEnv(gym.Env[TokenIds, TokenIds]):
    """A multi-turn environment whose observations and actions are token ids.

    ``reset(seed=None, options=None) -> (obs, info)``: ``obs`` is the whole prompt.
    ``step(action) -> (obs, reward, terminated, truncated, info)``: ``action`` is the policy's ids for its turn;
    ``obs`` the ids the environment appends after it.

    Subclasses implement :meth:`_reset` and :meth:`_step`; this class validates actions, refuses ``step`` before
    ``reset`` or after the end of an episode, counts the context, and ends an episode with ``truncated=True`` and
    ``info["truncation_reason"] == "context_length"`` once the context would exceed ``max_context_tokens``.

    Every ``info`` carries ``turn`` (number of actions taken), ``context_tokens`` (length of the context so far)
    and, when the env has a tokenizer, ``text`` (the observation decoded).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, vocab_size: int, max_context_tokens: int = 4096, tokenizer: Any = None):
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        if max_context_tokens <= 0:
            raise ValueError(f"max_context_tokens must be positive, got {max_context_tokens}")
        self.vocab_size = int(vocab_size)
        self.max_context_tokens = int(max_context_tokens)
        self.tokenizer = tokenizer
        self.observation_space = token_space(self.vocab_size)
        self.action_space = token_space(self.vocab_size)
        self._turn = 0
        self._context_tokens = 0
        self._state = "new"  # new -> running -> done

    # -- to implement -------------------------------------------------------------------------------------------
    def _reset(self, seed: int | None, options: dict | None) -> tuple[TokenIds, dict]:
        """Start an episode: return the prompt ids and info. ``self.np_random`` is already seeded."""
        raise NotImplementedError

    def _step(self, action: TokenIds) -> tuple[TokenIds, float, bool, bool, dict]:
        """Apply a validated action; return ``(obs, reward, terminated, truncated, info)``."""
        raise NotImplementedError

    # -- the API ------------------------------------------------------------------------------------------------
    @property
    def turn(self) -> int:
        """Number of actions taken in the current episode."""
        return self._turn

    @property
    def context_tokens(self) -> int:
        """Length in tokens of the context so far (prompt, actions and observations)."""
        return self._context_tokens

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[TokenIds, dict]:
        super().reset(seed=seed)
        obs, info = self._reset(seed, options)
        obs = np.asarray(obs, dtype=np.int64).reshape(-1)
        if obs.size > self.max_context_tokens:
            raise ValueError(
                f"the prompt is {obs.size} tokens, longer than max_context_tokens={self.max_context_tokens}; "
                "raise max_context_tokens or shorten the task"
            )
        self._turn = 0
        self._context_tokens = int(obs.size)
        self._state = "running"
        return obs, self._annotate(obs, info)

    def step(self, action: TokenIds) -> tuple[TokenIds, SupportsFloat, bool, bool, dict]:
        if self._state == "new":
            raise RuntimeError("step() called before reset(); call env.reset() to start an episode")
        if self._state == "done":
            raise RuntimeError("step() called after the episode ended (terminated or truncated); call env.reset()")
        action = as_token_ids(action, self.vocab_size)
        self._turn += 1
        self._context_tokens += int(action.size)
        if self._context_tokens > self.max_context_tokens:
            self._state = "done"
            empty = np.zeros(0, dtype=np.int64)
            info = {"truncation_reason": "context_length"}
            return empty, 0.0, False, True, self._annotate(empty, info)
        obs, reward, terminated, truncated, info = self._step(action)
        obs = np.asarray(obs, dtype=np.int64).reshape(-1)
        self._context_tokens += int(obs.size)
        if not (terminated or truncated) and self._context_tokens >= self.max_context_tokens:
            # No room is left for the policy's next turn.
            truncated = True
            info = {**info, "truncation_reason": "context_length"}
        if terminated or truncated:
            self._state = "done"
        return obs, float(reward), bool(terminated), bool(truncated), self._annotate(obs, info)

    def _annotate(self, obs: TokenIds, info: dict) -> dict:
        info = dict(info)
        info["turn"] = self._turn
        info["context_tokens"] = self._context_tokens
        if self.tokenizer is not None and "text" not in info:
            info["text"] = self.tokenizer.decode(obs.tolist(), skip_special_tokens=False)
        return info
