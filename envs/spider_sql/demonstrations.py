"""Gold demonstrations: each question's opening messages followed by a reply holding its gold query.

A policy that has never written a Spider-style query gets no reward to learn from (every episode scores 0, so GRPO
has no signal). Fine-tuning first on demonstrations gives it one; a JSONL file of them feeds
``agentgym train --algo sft --data FILE``::

    python -m agentgym.envs.spider_sql.demonstrations --split train --max-turns 1 --out spider_train_gold.jsonl

Each line is a ``messages`` record (see :mod:`agentgym.training.sft`): the env's system and user messages, exactly as
``reset`` builds them with the same env options, and one assistant reply that the env reads as the gold query
(in a ```sql block, followed by the submit marker when the env allows several replies).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from agentgym.envs.spider_sql.env import SpiderSQLEnv, extract_sql, is_submission


def gold_reply(env: SpiderSQLEnv, query: str) -> str:
    """The reply that ``env`` reads as submitting ``query``."""
    reply = f"```sql\n{query.strip().rstrip(';').strip()};\n```"
    return reply if env.max_turns == 1 else f"{reply}\n{env.submit_marker}"


def demonstrations(env: SpiderSQLEnv) -> Iterator[dict[str, Any]]:
    """One ``messages`` record per question of ``env``, in the order of ``env.examples``."""
    for index, example in enumerate(env.examples):
        messages, info = env.reset(options={"index": index})
        reply = gold_reply(env, example.query)
        if extract_sql(reply) is None or (env.max_turns > 1 and not is_submission(reply, env.submit_marker)):
            raise ValueError(f"the env would not read the gold reply of {example.split} example {example.index}")
        yield {
            "messages": [*messages, {"role": "assistant", "content": reply}],
            "reward": 1.0,
            "group_id": index,
            "db_id": info["db_id"],
            "difficulty": info["difficulty"],
        }


def write_demonstrations(path: str | Path, **env_kwargs: Any) -> int:
    """Write the demonstrations of a :class:`SpiderSQLEnv` built with ``env_kwargs`` to ``path``; return the count."""
    env = SpiderSQLEnv(**env_kwargs)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with path.open("w") as f:
            for record in demonstrations(env):
                f.write(json.dumps(record) + "\n")
                n += 1
        return n
    finally:
        env.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m agentgym.envs.spider_sql.demonstrations``: write gold demonstrations as JSONL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--split", default="train", help="data split (default: train)")
    parser.add_argument("--data-dir", default=None, help="a Spider-format directory (default: the bundled data)")
    parser.add_argument("--max-turns", type=int, default=3, help="the env's max_turns: its prompt depends on it")
    parser.add_argument("--sample-rows", type=int, default=0, help="sample rows per table in the prompt")
    parser.add_argument("--max-examples", type=int, default=None, help="keep at most this many questions")
    args = parser.parse_args(argv)
    n = write_demonstrations(
        args.out, split=args.split, data_dir=args.data_dir, max_turns=args.max_turns,
        sample_rows=args.sample_rows, max_examples=args.max_examples,
    )
    print(f"wrote {n} demonstrations to {args.out}")


if __name__ == "__main__":
    main()
