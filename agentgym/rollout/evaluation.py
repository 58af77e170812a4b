"""Held-out evaluation: one episode per task on fixed seeds, scored with a confidence interval and the env's own
report tables. Used by :meth:`agentgym.training.trainer.Trainer.evaluate` and ``agentgym eval``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

EVAL_SEED = 10_000_019
"""Default seed of the first evaluation task (also of :meth:`agentgym.training.trainer.Trainer.evaluate`)."""


@dataclass
class EvalResult:
    """What an evaluation measured."""

    success_rate: float
    success_ci95: tuple[float, float]
    """Wilson 95% interval of the success rate"""
    reward_mean: float
    reward_std: float
    turns_mean: float
    episode_tokens_mean: float
    truncated_rate: float
    episodes: int
    wall_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    """model, env, env_kwargs, sampling and seed"""
    by_difficulty: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{level: {"count", "accuracy"}}`` (then ``"all"``): the env's "by difficulty" report, when it has one"""
    reports: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """the env's own tables (its ``eval_report(task_records)``), e.g. SpiderSQL's "by difficulty" and "by turn":
    ``{title: {row: {"count", "accuracy"}}}``"""
    unplayed: list[dict[str, Any]] = field(default_factory=list)
    """tasks whose episode ended before the policy's first turn (counted as failures), with their reset info"""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    env: str,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int | None = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 32,
    max_context_tokens: int = 2048,
    seed: int = EVAL_SEED,
    batch_size: int = 32,
    engine: Any = None,
) -> tuple[EvalResult, list[Any]]:
    """Play ``episodes`` episodes, one per task (env reset seeds ``seed``, ``seed + 1``, ...), ``batch_size`` at a
    time; returns the result and the :class:`~agentgym.rollout.batch.Episode` list.

    An env that serves a finite task set (it has ``num_tasks`` and a ``task_order`` option, as SpiderSQL does) is
    switched to ``task_order="by_seed"`` unless the caller chose an order, so consecutive seeds visit every task once;
    ``episodes=None`` then plays each task once (otherwise ``None`` means 64).
    """
    import agentgym
    from agentgym.rollout.collector import Collector
    from agentgym.engines import SamplingParams, TransformersEngine

    env_kwargs = dict(env_kwargs or {})

    def make_env():
        return agentgym.make(env, tokenizer=tokenizer, max_context_tokens=max_context_tokens, **env_kwargs)

    num_tasks, eval_report = _probe(make_env, env_kwargs)
    if episodes is None:
        episodes = num_tasks or 64
    if episodes < 1 or batch_size < 1:
        raise ValueError(f"episodes and batch_size must be >= 1, got {episodes} and {batch_size}")
    engine = engine if engine is not None else TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens)

    t0 = time.perf_counter()
    collected: list[Any] = []
    unplayed: list[dict[str, Any]] = []
    collectors: dict[int, Collector] = {}
    try:
        done = 0
        while done < episodes:
            n = min(batch_size, episodes - done)
            if n not in collectors:
                collectors[n] = Collector(make_env, engine, params, num_groups=n, group_size=1)
            collected += collectors[n].collect(seed + done)
            unplayed += collectors[n].last_unplayed
            done += n
    finally:
        for c in collectors.values():
            c.close()
    wall = time.perf_counter() - t0
    total = len(collected) + len(unplayed)
    returns = np.array([ep.total_reward for ep in collected] + [0.0] * len(unplayed), dtype=np.float64)
    wins = int(sum(ep.success for ep in collected))
    records = task_records(collected, unplayed)
    reports = eval_report(records) if eval_report is not None else {}
    result = EvalResult(
        success_rate=wins / total,
        success_ci95=wilson_interval(wins, total),
        reward_mean=float(returns.mean()),
        reward_std=float(returns.std()),
        turns_mean=float(np.mean([len(ep.turns) for ep in collected] + [0] * len(unplayed))),
        episode_tokens_mean=float(np.mean([sum(len(t.action_ids) for t in ep.turns) for ep in collected]
                                          + [0] * len(unplayed))),
        truncated_rate=float(np.mean([ep.truncated for ep in collected] + [True] * len(unplayed))),
        episodes=total,
        wall_s=wall,
        settings=dict(env=env, env_kwargs=env_kwargs, temperature=temperature, top_p=top_p, top_k=top_k,
                      max_new_tokens=max_new_tokens, max_context_tokens=max_context_tokens, seed=seed),
        by_difficulty=reports.get("by difficulty", {}),
        reports=reports,
        unplayed=unplayed,
    )
    return result, collected


def _probe(make_env: Any, env_kwargs: dict[str, Any]) -> tuple[int | None, Any]:
    """What the env says about evaluating it: the number of tasks of an env that serves a finite task set (setting
    ``task_order="by_seed"`` in ``env_kwargs`` unless given), else ``None``; and its ``eval_report`` (a function of
    the task records returning its own tables), else ``None``. Both are looked up through the env's wrappers."""
    probe = make_env()
    try:
        num_tasks, report, inner = None, None, probe
        while inner is not None:
            report = report or getattr(inner, "eval_report", None)
            if num_tasks is None and hasattr(inner, "num_tasks") and hasattr(inner, "task_order"):
                env_kwargs.setdefault("task_order", "by_seed")
                num_tasks = int(inner.num_tasks) if env_kwargs["task_order"] == "by_seed" else 0
            inner = getattr(inner, "env", None)
        return (num_tasks or None), report
    finally:
        probe.close()


def task_records(episodes: Sequence[Any], unplayed: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One JSON-able line per task, in seed order: seed, success, return, turns, truncated and the env's scalar info
    (for SpiderSQL: difficulty, db_id, example_index, final_query, gold_query, match_reason)."""
    from agentgym.rollout.batch import scalar_info

    rows = []
    for ep in episodes:
        info = {k: v for k, v in scalar_info(ep.info).items() if k not in ("text", "success")}
        rows.append({"seed": ep.group_id, "success": bool(ep.success), "return": float(ep.total_reward),
                     "turns": len(ep.turns), "truncated": bool(ep.truncated), **info})
    for u in unplayed:
        rows.append({"success": False, "return": 0.0, "turns": 0, "truncated": True, **u})
    return sorted(rows, key=lambda r: r["seed"])
