"""The Spider self-correction loop as a plain agent program, trained through :class:`~agentgym.agents.env.AgentEnv`.

The program (:class:`SpiderAgent`) is ordinary openai-SDK code:

1. the *writer* writes a SQLite query for the question, given the schema;
2. the program runs it, read-only and time-limited, in the Spider env's :class:`SQLSandbox`;
3. the *checker* looks at the query and its result and answers ``OK`` or says what to fix;
4. unless the checker said OK, the writer rewrites its query (up to ``max_rounds`` writer calls in all).

The reward is the official execution match of the final query against the gold query (the env's
:func:`execution_match`, on the database's test suite): 1 or 0. Only the writer trains (``train_agents={"writer"}``);
the checker is the same model answered by the engine, and its calls make no training rows.

Run (prints the mean reward of each iteration)::

    python examples/spider_agent.py --model tiny --iterations 2 --split dev --max-examples 8
"""

from __future__ import annotations

import argparse
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from agentgym.agents.env import LLM, AgentEnv
from agentgym.rollout.collector import Collector
from agentgym.envs.spider_sql import (
    GoldQueryError,
    SpiderExample,
    SQLSandbox,
    execution_match,
    extract_sql,
    format_result,
    load_spider,
    serialize_schema,
    suite_db_paths,
)
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

WRITER, CHECKER = "writer", "checker"

WRITER_SYSTEM = (
    "You are an expert in SQLite. Answer the user's question about a database with one SQLite query, "
    "written in a ```sql code block."
)
CHECKER_SYSTEM = (
    "You review SQLite queries. Given a question, a query and what the query returned, reply OK if the result "
    "answers the question; otherwise say in one sentence what to fix."
)


def is_ok(verdict: str) -> bool:
    """Whether the checker accepted the query: its reply starts with OK."""
    return verdict.strip().upper().startswith("OK")


class SpiderAgent:
    """write -> execute -> check -> rewrite, as an agent program ``agent(example, llm) -> result``.

    The result is a dict: ``sql`` (the final query, or None), ``writes`` (writer calls), ``checks`` (checker calls),
    ``accepted`` (whether the checker said OK), ``db_id`` and ``example_index``.

    Args:
        max_rounds: most writer calls per question (the first write and the rewrites).
        max_tokens: the writer's ``max_tokens`` (during training the trainer's ``max_new_tokens`` rules).
        checker_max_tokens: the checker's ``max_tokens``.
        timeout_s: time limit per query run.
        preview_rows: result rows shown to the checker and the writer.
    """

    def __init__(
        self,
        max_rounds: int = 3,
        max_tokens: int = 128,
        checker_max_tokens: int = 48,
        timeout_s: float = 2.0,
        preview_rows: int = 5,
    ):
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
        self.max_rounds, self.max_tokens, self.checker_max_tokens = max_rounds, max_tokens, checker_max_tokens
        self.timeout_s, self.preview_rows = timeout_s, preview_rows
        self._schemas: dict[Path, str] = {}
        self._lock = threading.Lock()

    def schema(self, example: SpiderExample) -> str:
        """The database's CREATE TABLE statements (cached per database)."""
        with self._lock:
            if example.db_path not in self._schemas:
                self._schemas[example.db_path] = serialize_schema(example.db_path)
            return self._schemas[example.db_path]

    def check(self, client: Any, llm: LLM, example: SpiderExample, sql: str | None, result: str) -> str:
        """The checker's verdict on one query (a separate conversation, tagged as the checker)."""
        shown = f"```sql\n{sql}\n```" if sql else "(no query found in the reply)"
        r = client.chat.completions.create(
            model=llm.model_for(CHECKER),
            messages=[
                {"role": "system", "content": CHECKER_SYSTEM},
                {"role": "user", "content": f"Question: {example.question}\n\nQuery:\n{shown}\n\nResult:\n{result}"},
            ],
            max_tokens=self.checker_max_tokens,
            temperature=0.0,
        )
        return r.choices[0].message.content or ""

    def __call__(self, example: SpiderExample, llm: LLM) -> dict[str, Any]:
        client = llm.client()
        messages = [
            {"role": "system", "content": WRITER_SYSTEM},
            {"role": "user", "content": f"Database: {example.db_id}\n\n{self.schema(example)}\n\n"
                                        f"Question: {example.question}"},
        ]
        final: str | None = None
        writes = checks = 0
        accepted = False
        with SQLSandbox(example.db_path, timeout_s=self.timeout_s) as box:
            while True:
                r = client.chat.completions.create(
                    model=llm.model_for(WRITER), messages=messages, max_tokens=self.max_tokens
                )
                writes += 1
                reply = r.choices[0].message.content or ""
                messages.append({"role": "assistant", "content": reply})
                sql = extract_sql(reply)
                final = sql or final
                if writes >= self.max_rounds:
                    break
                result = format_result(box.execute(sql), self.preview_rows) if sql else "No query to run."
                verdict = self.check(client, llm, example, sql, result)
                checks += 1
                if sql and is_ok(verdict):
                    accepted = True
                    break
                messages.append({"role": "user", "content": (
                    f"Your query gave:\n{result}\n\nA reviewer says: {verdict.strip() or '(nothing)'}\n\n"
                    "Write a corrected query in a ```sql code block."
                )})
        return {"sql": final, "writes": writes, "checks": checks, "accepted": accepted,
                "db_id": example.db_id, "example_index": example.index}


def execution_reward(example: SpiderExample, result: dict[str, Any], timeout_s: float = 2.0) -> float:
    """1.0 when the final query's results match the gold query's (official execution rules), else 0.0."""
    sql = result.get("sql") if isinstance(result, dict) else None
    if not sql:
        return 0.0
    try:
        verdict = execution_match(sql, example.query, suite_db_paths(example.db_path), timeout_s=timeout_s)
    except GoldQueryError as e:
        warnings.warn(f"{example.split} example {example.index} cannot be scored: {e}", stacklevel=2)
        return 0.0
    return float(verdict.correct)


def make_env(
    tokenizer: Any, engine: Any, examples: Sequence[SpiderExample], agent: SpiderAgent | None = None,
    max_context_tokens: int = 4096, timeout_s: float = 120.0,
) -> AgentEnv:
    """The agent program as a token env in which only the writer trains; the checker is answered by ``engine``."""
    return AgentEnv(
        agent if agent is not None else SpiderAgent(), list(examples), tokenizer, engine=engine,
        train_agents={WRITER}, reward_fn=execution_reward, timeout_s=timeout_s, max_context_tokens=max_context_tokens,
    )


def build_trainer(
    cfg: TrainConfig, examples: Sequence[SpiderExample], agent: SpiderAgent | None = None, model: Any = None,
    tokenizer: Any = None,
) -> Trainer:
    """A :class:`Trainer` whose collector rolls out :func:`make_env` envs (``cfg.env`` is not used)."""
    agent = agent if agent is not None else SpiderAgent()

    def collector(trainer: Trainer) -> Collector:
        limit = getattr(trainer.engine, "max_model_len", None) or cfg.max_context_tokens
        context = min(cfg.max_context_tokens, limit)
        return Collector(
            lambda: make_env(trainer.tokenizer, trainer.engine, examples, agent, max_context_tokens=context),
            trainer.engine, trainer.params, num_groups=cfg.groups_per_iteration, group_size=trainer.algo.group_size,
            num_threads=cfg.env_threads,
        )

    if model is None:
        from agentgym.models import load_model

        model, tokenizer = load_model(cfg.model)
    return Trainer(cfg, model=model, tokenizer=tokenizer, collector=collector)


def train(trainer: Trainer, iterations: int, report: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run ``iterations`` iterations; ``report(iteration, metrics)`` after each one."""
    history = []
    for i in range(iterations):
        metrics = trainer.step()
        history.append(metrics)
        if report is not None:
            report(i + 1, metrics)
    return history


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="the policy (`tiny` for a tiny random model)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--split", default="train", help="Spider split of the bundled dataset (train, dev, test...)")
    p.add_argument("--data-dir", default=None, help="a Spider-format directory (default: the bundled one)")
    p.add_argument("--max-examples", type=int, default=None, help="train on the first N questions")
    p.add_argument("--groups", type=int, default=4, help="questions per iteration")
    p.add_argument("--group-size", type=int, default=4, help="episodes per question (the GRPO group)")
    p.add_argument("--max-rounds", type=int, default=3, help="writer calls per question (the write and rewrites)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per writer reply")
    p.add_argument("--lr", type=float, default=2e-6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    examples = load_spider(args.data_dir, split=args.split, max_examples=args.max_examples)
    cfg = TrainConfig(
        model=args.model, algo="grpo", iterations=args.iterations, groups_per_iteration=args.groups,
        group_size=args.group_size, max_new_tokens=args.max_new_tokens, lr=args.lr, seed=args.seed,
        wandb=False, progress=False, export=False, save_episodes=0,
    )
    trainer = build_trainer(cfg, examples, SpiderAgent(max_rounds=args.max_rounds))
    print(f"{len(examples)} {args.split} questions; only the {WRITER} trains, the {CHECKER} is answered by the engine")

    def report(i: int, m: dict) -> None:
        print(f"iteration {i}: reward {m['reward_mean']:.3f}  writer turns/episode {m['turns_mean']:.2f}  "
              f"{m['iteration_s']:.1f} s", flush=True)

    try:
        return train(trainer, args.iterations, report)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
