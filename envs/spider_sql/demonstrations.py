"""Gold demonstrations: each question's opening messages followed by replies that reach its gold query.

A policy that has never written a Spider-style query gets no reward to learn from (every episode scores 0, so GRPO
has no signal). Fine-tuning first on demonstrations gives it one; a JSONL file of them feeds
``agentgym train --algo sft --data FILE``::

    python -m agentgym.envs.spider_sql.demonstrations --split train --max-turns 1 --out spider_train_gold.jsonl

Each line is a ``messages`` record (see :mod:`agentgym.training.sft`): the env's system and user messages, exactly as
``reset`` builds them with the same env options, then the episode the env plays with the demonstrated replies, its
own feedback messages included. Three styles:

- ``submit`` (the default): one reply, the gold query in a ```sql block (followed by the submit marker when the
  env allows several replies);
- ``review`` (``max_turns >= 2``): the gold query without the marker, the env's result preview, then the marker
  alone: the policy learns to look at what its query returns before it submits;
- ``review`` with ``corrections``: also, per question, a second record that opens with a failing query (the gold
  query with one table or column name misspelt, checked to fail) and the env's error message, then the review
  (``max_turns >= 3``). The failing reply is context (``"train": false``): the policy learns to repair a query
  from the error, never to write the broken one.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

from agentgym.envs.spider_sql.env import SpiderSQLEnv, extract_sql, is_submission
from agentgym.envs.spider_sql.sql_text import tokenize

STYLES = ("submit", "review")


def gold_reply(env: SpiderSQLEnv, query: str) -> str:
    """The reply that ``env`` reads as submitting ``query``."""
    reply = _sql_reply(query)
    return reply if env.max_turns == 1 else f"{reply}\n{env.submit_marker}"


def _names(db_path: Path) -> tuple[set[str], set[str]]:
    """The table and column names of a database, lower-cased."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {r[1] for t in tables for r in con.execute(f'PRAGMA table_info("{t}")')}
    finally:
        con.close()
    return {t.lower() for t in tables}, {c.lower() for c in columns}


def _misspell(name: str, rng: random.Random) -> str:
    """A plausible wrong spelling of an identifier: plural/singular, an added or dropped ``_id``/``_name``."""
    low = name.lower()
    options = [name[:-1] if low.endswith("s") else name + "s", name + "_name", name + "_id"]
    for suffix in ("_id", "_name", "_date"):
        if low.endswith(suffix) and len(name) > len(suffix):
            options.append(name[: -len(suffix)])
    return rng.choice(options)


def broken_query(query: str, db_path: Path, rng: random.Random) -> list[str]:
    """Versions of ``query`` with one table or column name misspelt, in a random order (candidates: the caller
    keeps the first that fails to run)."""
    tables, columns = _names(db_path)
    tokens = tokenize(query)
    spots = [k for k, t in enumerate(tokens) if t.kind == "word" and t.text.lower() in tables | columns]
    rng.shuffle(spots)
    out = []
    for k in spots:
        wrong = _misspell(tokens[k].text, rng)
        if wrong.lower() in tables | columns:
            continue
        out.append("".join(wrong if j == k else t.text for j, t in enumerate(tokens)))
    return out


def _sql_reply(query: str) -> str:
    return f"```sql\n{query.strip().rstrip(';').strip()};\n```"


def _play(env: SpiderSQLEnv, index: int, replies: list[tuple[str, bool]]) -> tuple[list[dict[str, Any]], dict]:
    """Play ``replies`` (text, trained) in episode ``index``: the conversation and the last step's info."""
    messages, info = env.reset(options={"index": index})
    messages = list(messages)
    for text, trained in replies:
        messages.append({"role": "assistant", "content": text, **({} if trained else {"train": False})})
        observation, _, terminated, _, info = env.step(text)
        messages.extend(observation)
        if terminated:
            break
    return messages, info


def demonstrations(
    env: SpiderSQLEnv, style: str = "submit", corrections: bool = False, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """The ``messages`` records of ``env``'s questions, in the order of ``env.examples`` (see the module docstring);
    with ``corrections``, each question's correction record follows its review record (when a misspelling of its
    gold query fails to run; questions without one have only the review)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "review" and env.max_turns < 2:
        raise ValueError("the review style needs an env with max_turns >= 2 (the marker is a reply of its own)")
    if corrections and (style != "review" or env.max_turns < 3):
        raise ValueError("corrections need style='review' and an env with max_turns >= 3")
    rng = random.Random(seed)
    for index, example in enumerate(env.examples):
        if style == "submit":
            reply = gold_reply(env, example.query)
            if extract_sql(reply) is None or (env.max_turns > 1 and not is_submission(reply, env.submit_marker)):
                raise ValueError(f"the env would not read the gold reply of {example.split} example {example.index}")
            episodes = [_play(env, index, [(reply, True)])]
        else:
            review = [(_sql_reply(example.query), True), (env.submit_marker, True)]
            episodes = [_play(env, index, review)]
            if corrections:
                for broken in broken_query(example.query, example.db_path, rng):
                    messages, info = _play(env, index, [(_sql_reply(broken), False), *review])
                    first = next(k for k, m in enumerate(messages) if m["role"] == "assistant")
                    if messages[first + 1]["content"].startswith("Error:"):  # the env's feedback on the broken one
                        episodes.append((messages, info))
                        break
        for messages, info in episodes:
            if not info.get("success"):
                raise ValueError(
                    f"the demonstration of {example.split} example {example.index} does not win its episode "
                    f"({info.get('match_reason')})"
                )
            yield {
                "messages": messages,
                "reward": 1.0,
                "group_id": index,
                "db_id": info["db_id"],
                "difficulty": info["difficulty"],
            }


def write_demonstrations(
    path: str | Path, style: str = "submit", corrections: bool = False, seed: int = 0, **env_kwargs: Any
) -> int:
    """Write the demonstrations (see :func:`demonstrations`) of a :class:`SpiderSQLEnv` built with ``env_kwargs`` to
    ``path``; return the count."""
    env = SpiderSQLEnv(**env_kwargs)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with path.open("w") as f:
            for record in demonstrations(env, style=style, corrections=corrections, seed=seed):
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
    parser.add_argument("--style", default="submit", choices=STYLES,
                        help="submit: the gold query and the marker in one reply; review: the query, its result, "
                             "then the marker")
    parser.add_argument("--corrections", action="store_true",
                        help="also a record per question that repairs a failing query (review style, max turns >= 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the misspellings")
    args = parser.parse_args(argv)
    n = write_demonstrations(
        args.out, split=args.split, data_dir=args.data_dir, max_turns=args.max_turns,
        sample_rows=args.sample_rows, max_examples=args.max_examples, style=args.style,
        corrections=args.corrections, seed=args.seed,
    )
    print(f"wrote {n} demonstrations to {args.out}")


if __name__ == "__main__":
    main()
