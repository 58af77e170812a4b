"""Werewolf: a multi-agent social-deduction environment for LLM agents.

- :mod:`.game`: the rules engine (text-level, no tokenizer): :class:`WerewolfGame`, :class:`WerewolfConfig`.
- :mod:`.agents`: scripted players (:class:`RandomAgent`, :class:`HeuristicAgent`), :func:`play_game`,
  :func:`win_rates` (``python -m agentgym.envs.werewolf`` prints a win-rate table).
- :mod:`.env`: :class:`WerewolfEnv` (several LLM seats, token ids, one seat acting at a time),
  :class:`WerewolfTextEnv` (the same in chat messages) and :class:`WerewolfMessageEnv` (one LLM seat among
  scripted players; registered as ``agentgym/Werewolf-v0``).
- :mod:`.demonstrations`: :func:`~.demonstrations.teacher_games`, a scripted agent's games in a learner's seat as
  SFT data (``python -m agentgym.envs.werewolf.demonstrations``).
- :mod:`.pettingzoo`: :class:`~.pettingzoo.WerewolfAECEnv`, a PettingZoo AEC view (needs ``pettingzoo``).
"""

from agentgym.envs.werewolf.agents import HeuristicAgent, RandomAgent, ScriptedAgent, play_game, win_rates
from agentgym.envs.werewolf.env import WerewolfEnv, WerewolfMessageEnv, WerewolfTextEnv
from agentgym.envs.werewolf.game import ActionResult, Event, Request, WerewolfConfig, WerewolfGame

__all__ = [
    "ActionResult",
    "Event",
    "HeuristicAgent",
    "RandomAgent",
    "Request",
    "ScriptedAgent",
    "WerewolfConfig",
    "WerewolfEnv",
    "WerewolfGame",
    "WerewolfMessageEnv",
    "WerewolfTextEnv",
    "play_game",
    "win_rates",
]
