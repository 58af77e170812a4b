"""Environments written in chat messages, and the wrapper that makes them token-level.

Authors subclass :class:`MessageEnv` and think in messages; :class:`ChatTokenEnv` turns one into a
:class:`~agentgym.core.TokenEnv` through a tokenizer's chat template, incrementally (see :mod:`agentgym.chat`).
:class:`SystemPromptEnv` sets the system prompt of any message env (prompt optimization searches over it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from agentgym.chat import ChatTemplate
from agentgym.core import TokenEnv

Message = dict[str, Any]


class MessageEnv(gym.Env):
    """A multi-turn environment in chat messages.

    ``reset(*, seed=None, options=None) -> (messages, info)``: the opening messages (system and/or user).
    ``step(text) -> (new_messages, reward, terminated, truncated, info)``: ``text`` is the assistant's reply;
    ``new_messages`` (role ``"user"`` or ``"tool"``) follow it. Call ``super().reset(seed=seed)`` first in
    ``reset`` to seed ``self.np_random``.

    Put ``success`` (bool) in the final ``info`` when the task has a notion of success: trainers log its rate.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        """Seed ``self.np_random``; subclasses call this first, then return the opening messages and info."""
        super().reset(seed=seed)
        return [], {}

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:  # type: ignore[override]
        raise NotImplementedError


class ChatTokenEnv(TokenEnv):
    """A :class:`MessageEnv` as a token-level env, through ``tokenizer``'s chat template.

    ``info`` adds ``messages`` (the conversation so far, assistant replies included), ``action_text`` (the reply as
    the message env saw it) and ``prefix_stable`` (False when the template re-rendered earlier turns differently).

    Args:
        env: the message-level environment.
        tokenizer: a transformers tokenizer with a chat template.
        max_context_tokens: the longest context the episode may reach (default 4096).
        tools: tool schemas rendered by the template, if any.
    """

    def __init__(
        self, env: MessageEnv, tokenizer: Any, max_context_tokens: int = 4096, tools: list[dict] | None = None
    ):
        super().__init__(len(tokenizer), max_context_tokens=max_context_tokens, tokenizer=tokenizer)
        self.env = env
        self.chat = ChatTemplate(tokenizer, tools=tools)
        self.messages: list[Message] = []

    @property
    def unwrapped_env(self) -> MessageEnv:
        """The message-level environment inside."""
        return self.env

    @property
    def stop_token_ids(self) -> set[int]:
        """Ids that end the policy's turn (pass them to the engine)."""
        return self.chat.stop_token_ids

    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        messages, info = self.env.reset(seed=seed, options=options)
        self.messages = [dict(m) for m in messages]
        ids = self.chat.prompt_ids(self.messages)
        return np.asarray(ids, dtype=np.int64), {**info, "messages": copy.deepcopy(self.messages)}

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        text = self.chat.action_text(action.tolist())
        new_messages, reward, terminated, truncated, info = self.env.step(text)
        cont = self.chat.continuation_ids(self.messages, action.tolist(), new_messages, done=terminated or truncated)
        self.messages = [*self.messages, {"role": "assistant", "content": text}, *(dict(m) for m in new_messages)]
        info = {
            **info,
            "messages": copy.deepcopy(self.messages),
            "action_text": text,
            "prefix_stable": cont.prefix_stable,
        }
        return np.asarray(cont.obs_ids, dtype=np.int64), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()
        super().close()


def with_system_prompt(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` with the leading system message replaced by ``system_prompt`` (inserted when there is none,
    removed when ``system_prompt`` is None)."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out = out[1:]
    if system_prompt is not None:
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


class SystemPromptEnv(MessageEnv):
    """A :class:`~agentgym.message_env.MessageEnv` whose opening system message is ``system_prompt``.

    ``system_prompt`` may be changed between episodes (it applies from the next ``reset``). Attributes the wrapper
    does not define (``max_turns``, ...) are read from the wrapped env.

    Args:
        env: the message env to wrap.
        system_prompt: the system message's content; None removes the env's system message.
    """

    def __init__(self, env: MessageEnv, system_prompt: str | None):
        self.env = env
        self.system_prompt = system_prompt

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        messages, info = self.env.reset(seed=seed, options=options)
        return with_system_prompt(messages, self.system_prompt), info

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:
        return self.env.step(text)

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        if name == "env" or name.startswith("__"):  # not set yet (during unpickling or __init__)
            raise AttributeError(name)
        return getattr(self.env, name)
