"""Spider-format loading, the bundled dataset, its generator, and the hardness levels."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from agentgym.envs.spider_sql import (
    BUNDLED_DATA_DIR,
    SQLSandbox,
    classify_hardness,
    find_database,
    list_db_ids,
    load_spider,
    load_tables,
    serialize_schema,
)
from agentgym.envs.spider_sql.make_data import build, check_gold

# The bundled dataset --------------------------------------------------------------------------------------------


def test_bundled_sizes_and_difficulty_spread() -> None:
    for split, minimum in (("train", 150), ("dev", 50)):
        examples = load_spider(split=split)
        assert len(examples) >= minimum
        levels = Counter(e.difficulty for e in examples)
        for level in ("easy", "medium", "hard", "extra"):
            assert levels[level] >= 0.05 * len(examples), (split, levels)


def test_dev_databases_are_not_train_databases() -> None:
    train, dev = set(list_db_ids(split="train")), set(list_db_ids(split="dev"))
    assert len(train) >= 3 and len(dev) >= 2
    assert not train & dev


def test_bundled_files_follow_spider_layout() -> None:
    for name in ("train_spider.json", "train_others.json", "dev.json", "tables.json"):
        assert isinstance(json.loads((BUNDLED_DATA_DIR / name).read_text()), list)
    entry = json.loads((BUNDLED_DATA_DIR / "dev.json").read_text())[0]
    assert {"db_id", "question", "query", "query_toks", "query_toks_no_value", "question_toks"} <= set(entry)
    tables = load_tables()
    for db_id, schema in tables.items():
        path = find_database(db_id)
        assert path == BUNDLED_DATA_DIR / "database" / db_id / f"{db_id}.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        assert names == schema.table_names
        assert schema.foreign_keys, f"{db_id} has no foreign keys"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        sizes = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in names]
        assert min(sizes) >= 7 and sum(sizes) >= 100, (db_id, sizes)
        conn.close()
    size = sum(p.stat().st_size for p in BUNDLED_DATA_DIR.rglob("*") if p.is_file())
    assert size < 3_000_000


def test_every_gold_query_runs_and_returns_rows() -> None:
    boxes: dict[Path, SQLSandbox] = {}
    for split in ("train", "dev"):
        for ex in load_spider(split=split):
            box = boxes.setdefault(ex.db_path, SQLSandbox(ex.db_path))
            res = box.execute(ex.query)
            assert res.ok, (ex.question, res.error)
            assert res.rows and any(v is not None for row in res.rows for v in row), ex.question
            assert check_gold(ex.db_path, ex.query) is None, ex.question
    for box in boxes.values():
        box.close()


def test_questions_are_unique() -> None:
    questions = [(e.db_id, e.question) for s in ("train", "dev") for e in load_spider(split=s)]
    assert len(questions) == len(set(questions))


def test_generator_rebuilds_the_bundled_data(tmp_path: Path) -> None:
    build(tmp_path)
    for name in ("train_spider.json", "train_others.json", "dev.json", "tables.json"):
        assert (tmp_path / name).read_bytes() == (BUNDLED_DATA_DIR / name).read_bytes(), name
    shipped = sorted(p.relative_to(BUNDLED_DATA_DIR) for p in (BUNDLED_DATA_DIR / "database").rglob("*.sqlite"))
    rebuilt = sorted(p.relative_to(tmp_path) for p in (tmp_path / "database").rglob("*.sqlite"))
    assert shipped == rebuilt
    for rel in shipped:
        a = sqlite3.connect(f"file:{BUNDLED_DATA_DIR / rel}?mode=ro", uri=True)
        b = sqlite3.connect(f"file:{tmp_path / rel}?mode=ro", uri=True)
        assert list(a.iterdump()) == list(b.iterdump()), rel
        a.close()
        b.close()


# Loading a Spider directory it has never seen -------------------------------------------------------------------


def _make_db(path: Path, rows: list[tuple[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE city (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO city VALUES (?, ?)", rows)
    conn.commit()
    conn.close()


def _tables_entry(db_id: str) -> dict:
    return {
        "db_id": db_id,
        "table_names_original": ["city"],
        "table_names": ["city"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"]],
        "column_names": [[-1, "*"], [0, "id"], [0, "name"]],
        "column_types": ["text", "number", "text"],
        "primary_keys": [1],
        "foreign_keys": [],
    }


@pytest.fixture()
def spider_dir(tmp_path: Path) -> Path:
    root = tmp_path / "spider"
    _make_db(root / "database" / "geo_a" / "geo_a.sqlite", [(1, "Oslo"), (2, "Bergen")])
    _make_db(root / "database" / "geo_b" / "geo_b.sqlite", [(1, "Turku")])
    _make_db(root / "test_database" / "geo_c" / "geo_c.sqlite", [(1, "Cork")])
    (root / "database" / "geo_a" / "schema.sql").write_text("-- extra files are ignored\n")

    def q(db: str, question: str, query: str, **extra) -> dict:
        return {"db_id": db, "question": question, "query": query, "query_toks": [], "sql": {}, **extra}

    files = {
        "train_spider.json": [q("geo_a", "How many cities?", "SELECT count(*) FROM city"),
                              q("geo_b", "List the cities.", "SELECT name FROM city")],
        "train_others.json": [q("geo_a", "Name of city 1?", "SELECT name FROM city WHERE id = 1")],
        "dev.json": [q("geo_b", "  Count the cities.  ", "SELECT count(*) FROM city", difficulty="extra")],
        "test.json": [q("geo_c", "Which cities?", "SELECT name FROM city")],
        "tables.json": [_tables_entry("geo_a"), _tables_entry("geo_b")],
        "test_tables.json": [_tables_entry("geo_c")],
    }
    for name, data in files.items():
        (root / name).write_text(json.dumps(data))
    return root


def test_train_reads_train_spider_then_train_others(spider_dir: Path) -> None:
    examples = load_spider(spider_dir, split="train")
    assert [e.question for e in examples] == ["How many cities?", "List the cities.", "Name of city 1?"]
    assert [e.index for e in examples] == [0, 1, 2]
    assert examples[1].db_path == spider_dir / "database" / "geo_b" / "geo_b.sqlite"
    assert [e.question for e in load_spider(spider_dir, split="train_others")] == ["Name of city 1?"]


def test_db_filter_and_max_examples(spider_dir: Path) -> None:
    only_a = load_spider(spider_dir, split="train", db_ids=["geo_a"])
    assert [e.index for e in only_a] == [0, 2]
    assert len(load_spider(spider_dir, split="train", max_examples=2)) == 2
    assert len(load_spider(spider_dir, split="train", db_ids=["geo_a"], max_examples=1)) == 1
    with pytest.raises(ValueError, match="geo_zz"):
        load_spider(spider_dir, split="train", db_ids=["geo_zz"])


def test_dev_strips_text_and_keeps_a_given_difficulty(spider_dir: Path) -> None:
    (ex,) = load_spider(spider_dir, split="dev")
    assert ex.question == "Count the cities." and ex.difficulty == "extra"
    assert load_spider(spider_dir, split="train")[0].difficulty == "easy"


def test_test_split_uses_test_database_and_test_tables(spider_dir: Path) -> None:
    (ex,) = load_spider(spider_dir, split="test")
    assert ex.db_path == spider_dir / "test_database" / "geo_c" / "geo_c.sqlite"
    assert list(load_tables(spider_dir, split="test")) == ["geo_c"]
    assert "CREATE TABLE city" in serialize_schema(ex.db_path)


def test_train_others_is_optional(spider_dir: Path) -> None:
    (spider_dir / "train_others.json").unlink()
    assert len(load_spider(spider_dir, split="train")) == 2
    with pytest.raises(FileNotFoundError, match="train_others"):
        load_spider(spider_dir, split="train_others")


def test_loader_errors_say_what_is_wrong(spider_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_spider(spider_dir, split="validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spider(tmp_path / "nowhere")
    (spider_dir / "database" / "geo_b" / "geo_b.sqlite").unlink()
    with pytest.raises(FileNotFoundError, match="geo_b"):
        load_spider(spider_dir, split="dev")
    assert load_spider(spider_dir, split="dev", check_databases=False)[0].db_id == "geo_b"
    (spider_dir / "dev.json").write_text(json.dumps([{"db_id": "geo_a", "question": "?"}]))
    with pytest.raises(ValueError, match="query"):
        load_spider(spider_dir, split="dev")


def test_tables_json_schemas(spider_dir: Path) -> None:
    schema = load_tables(spider_dir)["geo_a"]
    assert schema.table_names == ["city"] and schema.columns[1] == (0, "id") and schema.primary_keys == [1]
    text = serialize_schema(spider_dir / "database" / "geo_a" / "geo_a.sqlite", sample_rows=1, tables_entry=schema)
    assert "CREATE TABLE city" in text and "PRIMARY KEY (id)" in text and "Oslo" in text and "Bergen" not in text


# Hardness --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "level"),
    [
        ("SELECT count(*) FROM singer", "easy"),
        ("SELECT name FROM singer ORDER BY age DESC", "easy"),
        ("SELECT name, country, age FROM singer ORDER BY age DESC", "medium"),
        ("SELECT avg(age), min(age), max(age) FROM singer WHERE country = 'France'", "medium"),
        ("SELECT T2.name FROM a AS T1 JOIN b AS T2 ON T1.id = T2.id WHERE T1.x = 1", "medium"),
        ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
        ("SELECT name FROM stadium EXCEPT SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 "
         "ON T1.stadium_id = T2.stadium_id WHERE T1.year = 2014", "hard"),
        ("SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id "
         "GROUP BY T1.stadium_id ORDER BY count(*) DESC LIMIT 1", "extra"),
        ("SELECT a FROM t WHERE b = 'x' INTERSECT SELECT a FROM t WHERE b = 'y' OR c LIKE '%z%'", "hard"),
        ("SELECT T1.a FROM t AS T1 JOIN u AS T2 ON T1.id = T2.id WHERE T2.b = 'x' INTERSECT "
         "SELECT T1.a FROM t AS T1 JOIN u AS T2 ON T1.id = T2.id WHERE T2.b = 'y'", "extra"),
    ],
)
def test_hardness_levels(sql: str, level: str) -> None:
    assert classify_hardness(sql) == level
