"""What agent code sees of the episode it runs in: the agent's name and the running episode, as context variables.

The episode is an :class:`~agentgym.agent_env.AgentEnv` episode in the trainer's process, or its stand-in in an
agent worker process (:mod:`agentgym.agent_process`); both take rewards through ``emit(value)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

__all__ = ["agent_name", "emit_reward"]

_current_agent: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentgym_agent", default=None)
_current_episode: contextvars.ContextVar[Any] = contextvars.ContextVar("agentgym_episode", default=None)


@contextlib.contextmanager
def agent_name(name: str) -> Iterator[None]:
    """Tag the LLM calls made inside this block (through :meth:`LLM.client`) as agent ``name``."""
    token = _current_agent.set(name)
    try:
        yield
    finally:
        _current_agent.reset(token)


def emit_reward(value: float) -> None:
    """Give the running episode a reward now; it is attributed to the latest completed trained turn.

    Call it from the agent (its thread or task, or code they call). Outside an episode it raises RuntimeError.
    """
    ep = _current_episode.get()
    if ep is None:
        raise RuntimeError("emit_reward() called outside an AgentEnv episode (call it from the agent's code)")
    ep.emit(float(value))
