"""agentgym: multi-turn token-level environments and native PyTorch RL for LLM agents."""

from agentgym.core import TokenEnv, as_token_ids, token_space
from agentgym.message_env import ChatTokenEnv, MessageEnv
from agentgym.registration import EnvSpec, make, make_vec, register, registry, spec
from agentgym.vector import StepResult, TokenVectorEnv

import agentgym.envs  # noqa: E402,F401  (registers the built-in envs)

__version__ = "0.1.0"

_LAZY = {"AgentEnv": "agentgym.agents.env", "LLM": "agentgym.agents.env", "agent_name": "agentgym.agents.env",
         "emit_reward": "agentgym.agents.env"}
"""Names imported on first use (PEP 562), so that ``import agentgym`` stays as fast as before."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agentgym' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AgentEnv",
    "ChatTokenEnv",
    "EnvSpec",
    "LLM",
    "MessageEnv",
    "StepResult",
    "TokenEnv",
    "TokenVectorEnv",
    "agent_name",
    "as_token_ids",
    "emit_reward",
    "make",
    "make_vec",
    "register",
    "registry",
    "spec",
    "token_space",
]
