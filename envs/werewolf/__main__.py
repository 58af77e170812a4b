"""``python -m agentgym.envs.werewolf [--games N] [--seed S]``: win rates of scripted line-ups."""

from agentgym.envs.werewolf.agents import main

main()
