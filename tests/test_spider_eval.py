"""Execution-match scoring: one test (or more) per rule of the official Spider evaluation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agentgym.envs.spider_sql import (
    GoldQueryError,
    accuracy_report,
    execution_match,
    format_report,
    load_spider,
    normalize_query,
    order_matters,
    results_match,
    suite_db_paths,
)
from agentgym.envs.spider_sql.evaluation import main as eval_main


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "pets" / "pets.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, kind TEXT, age INTEGER, weight REAL);
        INSERT INTO pet VALUES (1, 'Rex', 'dog', 5, 20.5), (2, 'Tom', 'cat', 3, 4.0), (3, 'Bo', 'dog', 3, 12.25),
                               (4, 'Kiki', 'bird', 1, 0.5), (5, 'Max', 'dog', 8, 30.0);
        """
    )
    conn.commit()
    conn.close()
    return path


def match(pred: str, gold: str, db: Path, **kw) -> bool:
    return execution_match(pred, gold, db, **kw).correct


# Rule 1: normalisation -------------------------------------------------------------------------------------------


def test_spaced_comparison_operators_are_joined(db: Path) -> None:
    fixed = normalize_query("SELECT 1 WHERE 2 > = 1 AND 1 < = 2 AND 1 ! = 2")
    assert fixed == "SELECT 1 WHERE 2 >= 1 AND 1 <= 2 AND 1 != 2"
    assert match("SELECT name FROM pet WHERE age > = 5", "SELECT name FROM pet WHERE age >= 5", db)


def test_distinct_is_removed_from_both_queries_by_default(db: Path) -> None:
    gold = "SELECT DISTINCT kind FROM pet"
    assert normalize_query(gold) == "SELECT  kind FROM pet"
    # Without DISTINCT the prediction has duplicate rows; both queries lose DISTINCT, so they match...
    assert match("SELECT kind FROM pet", gold, db)
    # ...and a prediction that deduplicates another way does not (the gold now has duplicates).
    assert not match("SELECT kind FROM pet GROUP BY kind", gold, db)
    # keep_distinct (the official --keep_distinct flag) compares them as written.
    assert not match("SELECT kind FROM pet", gold, db, keep_distinct=True)
    assert match("SELECT kind FROM pet GROUP BY kind", gold, db, keep_distinct=True)


def test_distinct_inside_literals_and_quoted_names_is_kept() -> None:
    sql = """SELECT count(DISTINCT a), 'distinct', "distinct" FROM t"""
    assert normalize_query(sql) == """SELECT count( a), 'distinct', "distinct" FROM t"""


def test_year_of_curdate_becomes_2020(db: Path) -> None:
    assert normalize_query("SELECT YEAR( CURDATE() ) - 5") == "SELECT 2020- 5"
    assert match("SELECT 2015", "SELECT YEAR(CURDATE()) - 5", db)


# Rule 2: row order -----------------------------------------------------------------------------------------------


def test_row_order_ignored_without_order_by(db: Path) -> None:
    assert match("SELECT name FROM pet ORDER BY name DESC", "SELECT name FROM pet", db)


def test_row_order_matters_when_gold_has_order_by(db: Path) -> None:
    gold = "SELECT name FROM pet ORDER BY age DESC, name"
    assert match("SELECT name FROM pet ORDER BY age DESC, name", gold, db)
    assert not match("SELECT name FROM pet ORDER BY age, name", gold, db)
    assert not match("SELECT name FROM pet", gold, db)


def test_order_by_in_prediction_only_does_not_make_order_matter(db: Path) -> None:
    assert match("SELECT name FROM pet ORDER BY weight", "SELECT name FROM pet", db)


def test_order_rule_is_a_case_insensitive_substring_test_on_the_gold() -> None:
    assert order_matters("select a from t order by a")
    assert order_matters("SELECT a FROM t WHERE b = 'sort order by x'")  # as the official script: plain substring
    assert not order_matters("SELECT a FROM t ORDER  BY a")  # two spaces: no "order by" substring
    assert not order_matters("SELECT a FROM t")


# Rules 3-4: empty results and shapes ----------------------------------------------------------------------------


def test_two_empty_results_match_whatever_their_columns(db: Path) -> None:
    assert results_match([], [], ordered=False)
    assert match("SELECT name, age FROM pet WHERE age > 100", "SELECT id FROM pet WHERE age > 100", db)


def test_empty_and_non_empty_differ(db: Path) -> None:
    assert not match("SELECT name FROM pet WHERE age > 100", "SELECT name FROM pet", db)


def test_different_row_counts_differ() -> None:
    assert not results_match([(1,), (2,)], [(1,)], ordered=False)


def test_extra_column_differs(db: Path) -> None:
    assert not match("SELECT name, age FROM pet", "SELECT name FROM pet", db)


def test_rows_compare_as_multisets() -> None:
    assert results_match([(1,), (1,), (2,)], [(2,), (1,), (1,)], ordered=False)
    assert not results_match([(1,), (1,), (2,)], [(1,), (2,), (2,)], ordered=False)  # same set, other counts


# Rule 5: quick rejection --------------------------------------------------------------------------------------


def test_quick_rejection_sorts_values_by_text_and_type_name() -> None:
    # Equal values of different types can sort differently next to a string; the official check rejects this.
    assert results_match([(2,)], [(2.0,)], ordered=False)
    assert not results_match([(2, "2.5")], [(2.0, "2.5")], ordered=False)


# Rule 6: column order -------------------------------------------------------------------------------------------


def test_permuted_columns_match(db: Path) -> None:
    assert match("SELECT age, name FROM pet", "SELECT name, age FROM pet", db)
    assert match("SELECT age, name FROM pet ORDER BY id", "SELECT name, age FROM pet ORDER BY id", db)


def test_column_names_do_not_matter(db: Path) -> None:
    assert match("SELECT name AS pet_name, count(*) AS n FROM pet GROUP BY name", "SELECT name, 1 FROM pet", db)


def test_one_permutation_must_fit_every_row() -> None:
    # Each row on its own is a permutation of the gold row, but no single column order fits both rows.
    assert not results_match([(1, 2), (3, 4)], [(2, 1), (3, 4)], ordered=False)
    assert results_match([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], ordered=False)


def test_permutation_of_more_than_three_columns() -> None:
    gold = [(1, "x", 2.5, None), (2, "y", 3.5, "z")]
    pred = [(None, 2.5, "x", 1), ("z", 3.5, "y", 2)]
    assert results_match(gold, pred, ordered=True)
    assert not results_match(gold, pred[::-1], ordered=True)
    assert results_match(gold, pred[::-1], ordered=False)


def test_duplicate_column_values_are_handled() -> None:
    gold = [(1, 1, 2), (1, 1, 3)]
    assert results_match(gold, [(2, 1, 1), (3, 1, 1)], ordered=False)
    assert not results_match(gold, [(2, 1, 1), (1, 3, 1)], ordered=False)


# Rule 7: values -------------------------------------------------------------------------------------------------


def test_integer_equals_float_text_differs_from_number(db: Path) -> None:
    assert match("SELECT 4.0", "SELECT 4", db)
    assert not match("SELECT '4'", "SELECT 4", db)


def test_nulls_are_equal_floats_are_exact(db: Path) -> None:
    assert match("SELECT NULL", "SELECT NULL", db)
    assert not match("SELECT 0.1 + 0.2", "SELECT 0.3", db)
    assert match("SELECT avg(age) FROM pet", "SELECT sum(age) * 1.0 / count(*) FROM pet", db)


# Rule 8: failures -----------------------------------------------------------------------------------------------


def test_failing_prediction_scores_zero(db: Path) -> None:
    res = execution_match("SELECT nme FROM pet", "SELECT name FROM pet", db)
    assert not res.correct and res.reason == "error" and "nme" in (res.pred.error or "")


def test_runaway_prediction_times_out(db: Path) -> None:
    forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    res = execution_match(forever, "SELECT 1", db, timeout_s=0.2)
    assert not res.correct and res.reason == "timeout"


def test_too_many_rows_scores_zero(db: Path) -> None:
    res = execution_match("SELECT a.id FROM pet a, pet b", "SELECT id FROM pet", db, max_rows=10)
    assert not res.correct and res.reason == "too_many_rows"


def test_failing_gold_is_a_data_error(db: Path) -> None:
    with pytest.raises(GoldQueryError):
        execution_match("SELECT 1", "SELECT * FROM no_such_table", db)


def test_prediction_must_match_on_every_database_of_a_test_suite(db: Path) -> None:
    twin = db.parent / "pets_variant.sqlite"
    conn = sqlite3.connect(twin)
    conn.executescript(
        "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, kind TEXT, age INTEGER, weight REAL);"
        "INSERT INTO pet VALUES (1, 'Ana', 'cat', 2, 3.0), (2, 'Rio', 'dog', 9, 25.0);"
    )
    conn.commit()
    conn.close()
    paths = suite_db_paths(db)
    assert paths == sorted([db, twin])
    gold = "SELECT name FROM pet WHERE kind = 'dog'"
    # Right on pets.sqlite only by coincidence of the data; the variant database exposes it.
    assert match("SELECT name FROM pet WHERE age IN (3, 5, 8) AND kind != 'cat'", gold, db)
    assert not match("SELECT name FROM pet WHERE age IN (3, 5, 8) AND kind != 'cat'", gold, paths)
    assert match("SELECT name FROM pet WHERE kind = 'dog'", gold, paths)


# Reports and the command line ----------------------------------------------------------------------------------


def test_accuracy_report_by_difficulty() -> None:
    rep = accuracy_report(
        [
            {"difficulty": "hard", "correct": True},
            {"difficulty": "easy", "correct": True},
            {"difficulty": "easy", "correct": False},
        ]
    )
    assert list(rep) == ["easy", "hard", "all"]
    assert rep["easy"] == {"count": 2, "accuracy": 0.5}
    assert rep["all"]["accuracy"] == pytest.approx(2 / 3)
    assert "easy" in format_report(rep)


def test_cli_scores_gold_predictions_perfectly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    examples = load_spider(split="dev")
    preds = tmp_path / "pred.txt"
    preds.write_text("\n".join(e.query for e in examples) + "\n")
    out = tmp_path / "results.jsonl"
    assert eval_main(["--pred", str(preds), "--split", "dev", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(examples) and all(r["correct"] for r in records)
    assert "1.000" in capsys.readouterr().out
