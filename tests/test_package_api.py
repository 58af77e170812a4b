"""The top-level names of the package: what `import agentgym` gives, and that it stays light."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import agentgym


def test_agent_names_import_from_the_package():
    from agentgym import LLM, AgentEnv, agent_name, emit_reward
    from agentgym.agents import env as agent_env

    assert (AgentEnv, LLM, agent_name, emit_reward) == (
        agent_env.AgentEnv, agent_env.LLM, agent_env.agent_name, agent_env.emit_reward)
    assert {"AgentEnv", "LLM", "agent_name", "emit_reward"} <= set(dir(agentgym)) & set(agentgym.__all__)
    assert all(getattr(agentgym, name) is not None for name in agentgym.__all__)
    with pytest.raises(RuntimeError, match="outside an AgentEnv episode"):
        agentgym.emit_reward(1.0)
    with pytest.raises(AttributeError, match="no attribute 'AgentEnvv'"):
        agentgym.AgentEnvv  # noqa: B018


def test_import_agentgym_leaves_the_agent_stack_unimported():
    """`import agentgym` loads neither the agent env nor its server and client libraries; the first use of
    `agentgym.AgentEnv` does."""
    code = (
        "import json, sys, agentgym\n"
        "heavy = ['agentgym.agents.env', 'fastapi', 'uvicorn', 'openai', 'httpx']\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "agentgym.AgentEnv\n"
        "print(json.dumps([before, 'agentgym.agents.env' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(agentgym.__file__).resolve().parents[1], check=True)
    before, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [] and loaded
