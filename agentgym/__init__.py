"""agentgym: multi-turn token-level environments and native PyTorch RL for LLM agents."""

from agentgym.core import TokenEnv, as_token_ids, token_space
from agentgym.message_env import ChatTokenEnv, MessageEnv
from agentgym.registration import EnvSpec, make, make_vec, register, registry, spec
from agentgym.vector import StepResult, TokenVectorEnv

import agentgym.envs  # noqa: E402,F401  (registers the built-in envs)

__version__ = "0.1.0"

__all__ = [
    "ChatTokenEnv",
    "EnvSpec",
    "MessageEnv",
    "StepResult",
    "TokenEnv",
    "TokenVectorEnv",
    "as_token_ids",
    "make",
    "make_vec",
    "register",
    "registry",
    "spec",
    "token_space",
]
