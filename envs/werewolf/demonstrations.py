"""Teacher demonstrations: a scripted agent plays the learner's seat, and its games become SFT data.

A small model that never writes a well-formed action ('KILL: player3') only ever gets the default for its seat, so
RL has nothing to compare. Fine-tuning it first on games where a scripted agent held the same seat, in the same
prompts, gives it the format (and the teacher's play); RL then starts from there::

    python -m agentgym.envs.werewolf.demonstrations --games 64 --learner werewolf --out wolf_demos.jsonl

Each line is a ``messages`` record (see :mod:`agentgym.training.sft`): the seat's conversation exactly as
:class:`~agentgym.envs.werewolf.env.WerewolfMessageEnv` builds it, with the teacher's replies as the assistant
messages, plus the game's ``reward``, ``success`` and ``role``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from agentgym.envs.werewolf.agents import AgentFactory, HeuristicAgent, RandomAgent
from agentgym.envs.werewolf.env import WerewolfMessageEnv, _agent_seed
from agentgym.envs.werewolf.game import WerewolfConfig

TEACHERS: dict[str, AgentFactory] = {
    "heuristic": HeuristicAgent,
    "random": RandomAgent,
    "random-moves": lambda: RandomAgent(moves=True),
}
"""``--teacher``: the heuristic plays the seat well; ``random`` plays legal moves and says filler; ``random-moves``
plays legal moves and speaks in random accusations and seer claims (the moves without the strategy)."""


def teacher_games(env: WerewolfMessageEnv, num_games: int, teacher: AgentFactory = HeuristicAgent,
                  seed: int = 0) -> Iterator[dict[str, Any]]:
    """Play ``num_games`` games of ``env`` (seeds ``seed, seed + 1, ...``) with ``teacher`` in the learner's seat;
    yield each as a ``messages`` record."""
    for i in range(num_games):
        messages, info = env.reset(seed=seed + i)
        me = env.learner
        bot = teacher()
        bot.reset(me, seed=_agent_seed(seed + i, 1_000_003))
        cursor = 0
        conversation = list(messages)
        reward, done, final = 0.0, False, {}
        while not done:
            game = env.text.game
            bot.observe(game.events_for(me, cursor))
            cursor = len(game.events)
            reply = bot.act(game.request)
            conversation.append({"role": "assistant", "content": reply})
            new, r, terminated, truncated, final = env.step(reply)
            reward += r
            done = terminated or truncated
            conversation.extend(new)
        yield {
            "messages": conversation,
            "reward": reward,
            "success": bool(final.get("success", False)),
            "role": info["role"],
            "group_id": i,
        }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m agentgym.envs.werewolf.demonstrations``: write teacher games as JSONL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--games", type=int, default=64, help="games to play")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first game")
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default="heuristic", help="the seat's scripted agent")
    parser.add_argument("--learner", default="any", help="the seat (as WerewolfMessageEnv's learner)")
    parser.add_argument("--opponents", choices=("heuristic", "random"), default="heuristic")
    parser.add_argument("--config", default="{}", help="rule overrides as YAML, e.g. "
                        "'{discussion_rounds: 0, roles: {werewolf: 1, seer: 1, villager: 3}}'")
    args = parser.parse_args(argv)
    import yaml

    overrides = yaml.safe_load(args.config) or {}
    env = WerewolfMessageEnv(learner=args.learner, opponents=args.opponents, config=WerewolfConfig(**overrides))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    wins = 0
    with path.open("w") as f:
        for record in teacher_games(env, args.games, TEACHERS[args.teacher], args.seed):
            wins += record["success"]
            f.write(json.dumps(record) + "\n")
    print(f"wrote {args.games} games to {path}; the teacher's team won {wins} ({wins / max(args.games, 1):.1%})")


if __name__ == "__main__":
    main()
