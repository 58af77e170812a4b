"""Read a Spider-format directory as distributed.

Layout (Spider 1.0; every file but the split being read is optional)::

    <data_dir>/
        train_spider.json  train_others.json  dev.json  test.json       # lists of examples
        tables.json  test_tables.json                                     # schemas (test split: test_tables.json)
        database/<db_id>/<db_id>.sqlite                                   # databases
        test_database/<db_id>/<db_id>.sqlite                              # test databases, where released

An example needs ``db_id``, ``question`` and ``query``; other fields (``query_toks``, ``sql`` ...) are ignored.
A ``difficulty`` or ``hardness`` field, where present, gives the level; otherwise it is computed from the gold
query with Spider's rule (:func:`~agentgym.envs.spider_sql.sql_text.classify_hardness`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from agentgym.envs.spider_sql.sql_text import HARDNESS_LEVELS, classify_hardness

BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "data"
"""The dataset shipped with agentgym (built by ``make_data.py``), in Spider's format."""

SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train_spider.json", "train_others.json"),
    "train_spider": ("train_spider.json",),
    "train_others": ("train_others.json",),
    "dev": ("dev.json",),
    "test": ("test.json",),
}
"""The example files each split reads, in order; for ``train`` a missing ``train_others.json`` is skipped."""


@dataclass(frozen=True)
class SpiderExample:
    """One question over one database."""

    index: int
    """Position in the split's example file(s), before any filtering (a stable id)."""
    split: str
    db_id: str
    question: str
    query: str
    """The gold SQL."""
    db_path: Path
    """The ``.sqlite`` file the question is about."""
    difficulty: str
    """Spider's level: easy, medium, hard or extra."""


@dataclass
class DatabaseSchema:
    """One entry of ``tables.json``: a database's tables, columns and keys, with the original names."""

    db_id: str
    table_names: list[str]
    columns: list[tuple[int, str]]
    """(table index, column name) for each column; index 0 is Spider's ``(-1, "*")``."""
    column_types: list[str]
    primary_keys: list[int] = field(default_factory=list)
    """Column indices (into ``columns``); a composite key lists several (or a nested list in newer files)."""
    foreign_keys: list[tuple[int, int]] = field(default_factory=list)
    """(column, referenced column) index pairs."""

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "DatabaseSchema":
        """Parse one ``tables.json`` entry."""
        try:
            pks: list[int] = []
            for pk in entry.get("primary_keys", []):
                pks.extend(pk if isinstance(pk, list) else [pk])
            return cls(
                db_id=entry["db_id"],
                table_names=list(entry["table_names_original"]),
                columns=[(int(t), str(c)) for t, c in entry["column_names_original"]],
                column_types=list(entry["column_types"]),
                primary_keys=pks,
                foreign_keys=[(int(a), int(b)) for a, b in entry.get("foreign_keys", [])],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed tables.json entry {entry.get('db_id', '?')!r}: {e!r}") from e

    def table_columns(self, table_index: int) -> list[int]:
        """Indices of the columns of table ``table_index``."""
        return [i for i, (t, _) in enumerate(self.columns) if t == table_index]


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path} should hold a JSON list, not {type(data).__name__}")
    return data


def load_tables(data_dir: str | Path | None = None, split: str = "train") -> dict[str, DatabaseSchema]:
    """The schemas of ``tables.json`` (``test_tables.json`` first for the test split), by db id."""
    root = Path(data_dir) if data_dir is not None else BUNDLED_DATA_DIR
    names = ("test_tables.json", "tables.json") if split == "test" else ("tables.json",)
    for name in names:
        if (root / name).is_file():
            return {e["db_id"]: DatabaseSchema.from_json(e) for e in _read_json_list(root / name)}
    raise FileNotFoundError(f"no {' or '.join(names)} in {root}")


def database_dirs(data_dir: str | Path | None = None, split: str = "train") -> list[Path]:
    """The folders searched for ``<db_id>/<db_id>.sqlite``, in order (``test_database/`` first for test)."""
    root = Path(data_dir) if data_dir is not None else BUNDLED_DATA_DIR
    names = ("test_database", "database") if split == "test" else ("database", "test_database")
    return [root / n for n in names if (root / n).is_dir()]


def find_database(db_id: str, data_dir: str | Path | None = None, split: str = "train") -> Path:
    """The path of database ``db_id``'s ``.sqlite`` file; raises FileNotFoundError naming where it looked."""
    dirs = database_dirs(data_dir, split)
    for d in dirs:
        path = d / db_id / f"{db_id}.sqlite"
        if path.is_file():
            return path
    looked = ", ".join(str(d / db_id / f"{db_id}.sqlite") for d in dirs) or f"no database folder in {data_dir}"
    raise FileNotFoundError(f"database {db_id!r} not found (looked in: {looked})")


def list_db_ids(data_dir: str | Path | None = None, split: str = "train") -> list[str]:
    """The db ids the split's examples use, in first-use order."""
    return list(dict.fromkeys(e.db_id for e in load_spider(data_dir, split, check_databases=False)))


def load_spider(
    data_dir: str | Path | None = None,
    split: str = "train",
    db_ids: Iterable[str] | None = None,
    max_examples: int | None = None,
    check_databases: bool = True,
) -> list[SpiderExample]:
    """Load one split of a Spider-format directory.

    Args:
        data_dir: the directory (default: the bundled dataset, :data:`BUNDLED_DATA_DIR`).
        split: ``train`` (``train_spider.json`` then ``train_others.json``), ``train_spider``, ``train_others``,
            ``dev`` or ``test``.
        db_ids: keep only questions over these databases.
        max_examples: keep at most this many (the first ones, after the db filter).
        check_databases: fail early when a database file is missing (otherwise ``db_path`` may not exist).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    root = Path(data_dir) if data_dir is not None else BUNDLED_DATA_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"Spider data directory {root} does not exist")
    files = [root / name for name in SPLIT_FILES[split]]
    present = [p for p in files if p.is_file()]
    if not present or (split != "train" and len(present) != len(files)):
        raise FileNotFoundError(f"split {split!r} needs {' and '.join(str(p) for p in files)}")
    keep = set(db_ids) if db_ids is not None else None
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    dirs = database_dirs(root, split)
    paths: dict[str, Path] = {}
    examples: list[SpiderExample] = []
    index = -1
    for path in present:
        for i, entry in enumerate(_read_json_list(path)):
            index += 1
            if max_examples is not None and len(examples) >= max_examples:
                break
            try:
                db_id, question, query = entry["db_id"], entry["question"], entry["query"]
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path} entry {i} lacks a field ({e}); Spider entries have db_id, question, query")
            if keep is not None and db_id not in keep:
                continue
            if db_id not in paths:
                if check_databases:
                    paths[db_id] = find_database(db_id, root, split)
                else:
                    default = dirs[0] if dirs else root / "database"
                    paths[db_id] = default / db_id / f"{db_id}.sqlite"
            level = str(entry.get("difficulty", entry.get("hardness", ""))).lower()
            if level not in HARDNESS_LEVELS:
                level = classify_hardness(query)
            examples.append(
                SpiderExample(
                    index=index,
                    split=split,
                    db_id=db_id,
                    question=str(question).strip(),
                    query=str(query).strip(),
                    db_path=paths[db_id],
                    difficulty=level,
                )
            )
    if keep is not None:
        unknown = keep - {e.db_id for e in examples}
        if unknown and max_examples is None:
            raise ValueError(f"no {split} questions over db ids {sorted(unknown)}")
    return examples
