"""Rollouts: groups of episodes from envs and an engine, here (:mod:`~agentgym.rollout.collector`) or on Ray actors
(:mod:`~agentgym.rollout.ray_workers`), and the Episode / TensorDict batch format (:mod:`~agentgym.rollout.batch`).
"""
