"""Execution accuracy, scored the way the official Spider (test-suite) evaluation scores it.

A predicted query is correct when, on every database of the example's test suite (each ``*.sqlite`` file in the
folder of the example's database; plain Spider has one), it runs without error and its result equals the gold
query's result under these rules:

1. **Normalisation.** In both queries ``> =``, ``< =`` and ``! =`` become ``>=``, ``<=`` and ``!=``, and
   ``YEAR(CURDATE())`` becomes ``2020``. Unless ``keep_distinct`` is set (the official default is not to), every
   bare ``DISTINCT`` keyword is removed from both queries before they run.
2. **Row order** matters only when the normalised gold query contains the text ``order by`` (case-insensitive
   substring test, as the official script does); otherwise rows compare as multisets (duplicates count).
3. **Empty results:** two empty results are equal whatever their columns.
4. **Shape:** different row counts, or different column counts, are unequal.
5. **Quick rejection** (a necessary condition the official script checks first): sort each row's values by the
   key ``str(value) + str(type(value))``; these sorted rows must be equal as lists when order matters, as sets
   otherwise.
6. **Column order** does not matter: the results are equal when some permutation of the predicted columns makes
   them equal (as lists of rows when order matters, as multisets of rows otherwise). Column names never matter.
7. **Values** compare with Python equality on what SQLite returns: ``1 == 1.0``, ``'1' != 1``, ``NULL == NULL``,
   floats exactly (no rounding). Text that is not valid UTF-8 has its invalid bytes dropped.
8. A prediction that errors, times out, or returns more than ``max_rows`` rows scores 0. A gold query that fails
   is a data error and raises :class:`GoldQueryError`.

Not reproduced: the official ``--plug_value`` mode (gold values substituted into the prediction) and its 60 s
time limit for the prediction (here ``timeout_s``, default 5 s; the gold query keeps 60 s). The official script
prunes candidate column permutations with 20 randomly sampled rows; here all rows prune them, which gives the
same answer deterministically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from agentgym.envs.spider_sql.sandbox import ExecutionResult, SQLSandbox
from agentgym.envs.spider_sql.sql_text import HARDNESS_LEVELS, remove_distinct

_CUR_YEAR_RE = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


class GoldQueryError(RuntimeError):
    """The gold query failed on one of its databases: the dataset is broken."""


def normalize_query(sql: str, keep_distinct: bool = False) -> str:
    """Rule 1: the text the official evaluation actually runs for ``sql``."""
    sql = sql.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
    if not keep_distinct:
        sql = remove_distinct(sql)
    return _CUR_YEAR_RE.sub("2020", sql)


def order_matters(gold_sql: str, keep_distinct: bool = False) -> bool:
    """Rule 2: whether row order counts when comparing against ``gold_sql``."""
    return "order by" in normalize_query(gold_sql, keep_distinct).lower()


def _unordered_row(row: Sequence[Any]) -> tuple:
    return tuple(sorted(row, key=lambda v: str(v) + str(type(v))))


def _column_permutations(gold: Sequence[tuple], pred: Sequence[tuple]) -> Iterator[tuple[int, ...]]:
    """Permutations ``p`` (gold column i <- predicted column p[i]) not ruled out by a value missing from a column."""
    n = len(gold[0])
    gold_columns = [{row[i] for row in gold} for i in range(n)]
    pred_columns = [{row[j] for row in pred} for j in range(n)]
    candidates = [[j for j in range(n) if pred_columns[j] <= gold_columns[i]] for i in range(n)]

    def extend(prefix: list[int], used: set[int]) -> Iterator[tuple[int, ...]]:
        i = len(prefix)
        if i == n:
            yield tuple(prefix)
            return
        for j in candidates[i]:
            if j not in used:
                prefix.append(j)
                used.add(j)
                yield from extend(prefix, used)
                used.discard(j)
                prefix.pop()

    return extend([], set())


def results_match(gold: Sequence[Sequence[Any]], pred: Sequence[Sequence[Any]], ordered: bool) -> bool:
    """Rules 3-7: whether two query results (lists of row tuples) denote the same answer.

    Args:
        gold: the gold query's rows.
        pred: the predicted query's rows.
        ordered: whether row order counts (see :func:`order_matters`).
    """
    gold = [tuple(r) for r in gold]
    pred = [tuple(r) for r in pred]
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    if len(gold[0]) != len(pred[0]):
        return False
    g_unordered = [_unordered_row(r) for r in gold]
    p_unordered = [_unordered_row(r) for r in pred]
    if ordered and g_unordered != p_unordered:
        return False
    if not ordered and set(g_unordered) != set(p_unordered):
        return False
    gold_counts = None if ordered else Counter(gold)
    for perm in _column_permutations(gold, pred):
        permuted = [tuple(row[j] for j in perm) for row in pred]
        if ordered:
            if permuted == gold:
                return True
        elif Counter(permuted) == gold_counts:
            return True
    return False


def suite_db_paths(db_path: str | Path) -> list[Path]:
    """The databases an example is checked on: every ``*.sqlite`` file in its database's folder, sorted."""
    db_path = Path(db_path)
    paths = sorted(p for p in db_path.parent.glob("*.sqlite") if p.is_file())
    return paths or [db_path]


@dataclass
class MatchResult:
    """The verdict on one prediction."""

    correct: bool
    """Whether the prediction's results equal the gold results on every database."""
    pred: ExecutionResult
    """The prediction's execution on the first database (its rows, or its error)."""
    reason: str
    """``match``, ``error``, ``timeout``, ``too_many_rows`` or ``mismatch``."""


def execution_match(
    pred_sql: str,
    gold_sql: str,
    db_paths: str | Path | Sequence[str | Path],
    *,
    keep_distinct: bool = False,
    timeout_s: float = 5.0,
    gold_timeout_s: float = 60.0,
    max_rows: int = 100_000,
    sandboxes: Mapping[Path, SQLSandbox] | None = None,
) -> MatchResult:
    """Score ``pred_sql`` against ``gold_sql`` by execution (see the module docstring for the rules).

    Args:
        pred_sql: the predicted query (untrusted; it runs in a :class:`SQLSandbox`).
        gold_sql: the gold query.
        db_paths: one database or a test suite of databases sharing a schema.
        keep_distinct: keep DISTINCT keywords instead of removing them (official flag ``--keep_distinct``).
        timeout_s: time limit for the prediction, per database.
        gold_timeout_s: time limit for the gold query, per database (the official limit is 60 s).
        max_rows: most rows fetched per query; a prediction returning more scores 0.
        sandboxes: open sandboxes to reuse, by database path (others are opened and closed here).
    """
    paths = [Path(db_paths)] if isinstance(db_paths, (str, Path)) else [Path(p) for p in db_paths]
    if not paths:
        raise ValueError("execution_match needs at least one database path")
    pred_n = normalize_query(pred_sql, keep_distinct)
    gold_n = normalize_query(gold_sql, keep_distinct)
    ordered = "order by" in gold_n.lower()
    first: ExecutionResult | None = None
    open_boxes = dict(sandboxes or {})
    for path in paths:
        owned = path not in open_boxes
        box = SQLSandbox(path, timeout_s=timeout_s, max_rows=max_rows) if owned else open_boxes[path]
        try:
            gold = box.execute(gold_n, max_rows=max_rows, timeout_s=gold_timeout_s)
            if not gold.ok or gold.truncated:
                why = gold.error or f"more than {max_rows} rows"
                raise GoldQueryError(f"gold query failed on {path}: {why}\n  query: {gold_sql}")
            pred = box.execute(pred_n, max_rows=max_rows, timeout_s=timeout_s)
        finally:
            if owned:
                box.close()
        first = first or pred
        if not pred.ok:
            return MatchResult(False, pred, "timeout" if pred.timed_out else "error")
        if pred.truncated:
            return MatchResult(False, pred, "too_many_rows")
        if not results_match(gold.rows, pred.rows, ordered):
            return MatchResult(False, pred, "mismatch")
    assert first is not None
    return MatchResult(True, first, "match")


def accuracy_report(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Execution accuracy overall and by difficulty.

    Args:
        records: mappings with ``correct`` (bool) and ``difficulty`` (one of easy, medium, hard, extra).

    Returns:
        ``{level: {"count": n, "accuracy": a}}`` for each level present, in Spider's order, then ``"all"``.
    """
    counts: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for r in records:
        level = str(r.get("difficulty", "unknown"))
        for key in (level, "all"):
            counts[key] += 1
            hits[key] += bool(r["correct"])
    order = [lvl for lvl in HARDNESS_LEVELS if counts[lvl]] + sorted(
        k for k in counts if k not in HARDNESS_LEVELS and k != "all"
    )
    return {k: {"count": counts[k], "accuracy": hits[k] / counts[k]} for k in [*order, "all"] if counts[k]}


def format_report(report: Mapping[str, Mapping[str, float]]) -> str:
    """The report of :func:`accuracy_report` as a small text table."""
    lines = [f"{'level':<8} {'count':>6} {'exec acc':>9}"]
    for level, row in report.items():
        lines.append(f"{level:<8} {int(row['count']):>6} {row['accuracy']:>9.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a file of predicted queries (one per line, in split order) against a Spider-format split."""
    from agentgym.envs.spider_sql.data import load_spider

    parser = argparse.ArgumentParser(
        prog="python -m agentgym.envs.spider_sql.evaluation", description=main.__doc__
    )
    parser.add_argument("--pred", required=True, help="predicted queries, one per line ('-' for stdin)")
    parser.add_argument("--split", default="dev", help="train, dev or test (default dev)")
    parser.add_argument("--data-dir", default=None, help="a Spider-format directory (default: the bundled data)")
    parser.add_argument("--db-ids", default=None, help="comma-separated database ids to keep")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--keep-distinct", action="store_true", help="do not remove DISTINCT before running")
    parser.add_argument("--out", default=None, help="write per-example results here (JSON lines)")
    args = parser.parse_args(argv)
    examples = load_spider(
        args.data_dir,
        split=args.split,
        db_ids=args.db_ids.split(",") if args.db_ids else None,
        max_examples=args.max_examples,
    )
    stream = sys.stdin if args.pred == "-" else open(args.pred, encoding="utf-8")
    with stream:
        preds = [line.rstrip("\n").split("\t")[0] for line in stream]
    if len(preds) != len(examples):
        parser.error(f"{len(preds)} predictions for {len(examples)} examples")
    records = []
    boxes: dict[Path, SQLSandbox] = {}
    for ex, pred in zip(examples, preds):
        paths = suite_db_paths(ex.db_path)
        for p in paths:
            boxes.setdefault(p, SQLSandbox(p, timeout_s=5.0, max_rows=100_000))
        verdict = execution_match(pred, ex.query, paths, keep_distinct=args.keep_distinct, sandboxes=boxes)
        records.append(
            {
                "index": ex.index,
                "db_id": ex.db_id,
                "difficulty": ex.difficulty,
                "question": ex.question,
                "gold": ex.query,
                "pred": pred,
                "correct": verdict.correct,
                "reason": verdict.reason,
                "error": verdict.pred.error,
            }
        )
    for box in boxes.values():
        box.close()
    print(format_report(accuracy_report(records)))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
