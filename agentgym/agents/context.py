"""What agent code sees of the episode it runs in: the agent's name and the running episode, as context variables;
and which agents' calls train (:func:`trainable_filter`).

The episode is an :class:`~agentgym.agents.env.AgentEnv` episode in the trainer's process, or its stand-in in an
agent worker process (:mod:`agentgym.agents.process`); both take rewards through ``emit(value)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Any, Callable, Iterator

__all__ = ["agent_name", "emit_reward", "trainable_filter"]

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


def trainable_filter(spec: str | set[str] | None) -> Callable[[str], bool]:
    """A predicate over policy names from a set of names or a regex (None: everything trains)."""
    if spec is None:
        return lambda name: True
    if isinstance(spec, str):
        pattern = re.compile(spec)
        return lambda name: pattern.fullmatch(name) is not None
    names = set(spec)
    return lambda name: name in names
