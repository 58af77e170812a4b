"""Agents as environments: any program that calls an OpenAI-compatible endpoint, stepped turn by turn.

:mod:`~agentgym.agents.env` (``AgentEnv``), :mod:`~agentgym.agents.context` (``emit_reward``, ``agent_name``),
:mod:`~agentgym.agents.process` (the agent's worker process), :mod:`~agentgym.rollout.multi_agent` (several policies
in one game, selective optimization).
"""
