"""Render a database schema as text for the prompt.

Two sources: the ``CREATE TABLE`` statements stored in the ``.sqlite`` file itself (exactly what SQLite runs), or
statements rebuilt from a ``tables.json`` entry (names, types, keys). Either can be followed by a few sample rows
per table, as an SQL comment.
"""

from __future__ import annotations

import re
from pathlib import Path

from agentgym.envs.spider_sql.data import DatabaseSchema
from agentgym.envs.spider_sql.sandbox import SQLSandbox

_SPIDER_TYPES = {"text": "TEXT", "number": "NUMERIC", "time": "TEXT", "boolean": "BOOLEAN", "others": "TEXT"}


def quote_identifier(name: str) -> str:
    """``name`` as an SQLite identifier, double-quoted only when it needs to be."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _tidy(ddl: str) -> str:
    lines = [line.rstrip() for line in ddl.strip().splitlines()]
    return "\n".join(line for line in lines if line.strip()).rstrip(";") + ";"


def sqlite_ddl(db_path: str | Path) -> list[tuple[str, str]]:
    """(table name, CREATE TABLE statement) for each user table of ``db_path``, in creation order."""
    with SQLSandbox(db_path, isolation="none") as box:  # trusted queries: no worker process needed
        res = box.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql IS NOT NULL ORDER BY rowid"
        )
    if not res.ok:
        raise RuntimeError(f"cannot read the schema of {db_path}: {res.error}")
    return [(name, _tidy(sql)) for name, sql in res.rows]


def tables_json_ddl(schema: DatabaseSchema) -> list[tuple[str, str]]:
    """(table name, CREATE TABLE statement) rebuilt from a ``tables.json`` entry."""
    out = []
    pk = set(schema.primary_keys)
    for t, table in enumerate(schema.table_names):
        cols = schema.table_columns(t)
        parts = [f"  {quote_identifier(schema.columns[c][1])} {_SPIDER_TYPES.get(schema.column_types[c], 'TEXT')}"
                 for c in cols]
        keys = [quote_identifier(schema.columns[c][1]) for c in cols if c in pk]
        if keys:
            parts.append(f"  PRIMARY KEY ({', '.join(keys)})")
        for src, dst in schema.foreign_keys:
            if src in cols:
                ref_table = schema.table_names[schema.columns[dst][0]]
                parts.append(
                    f"  FOREIGN KEY ({quote_identifier(schema.columns[src][1])}) REFERENCES "
                    f"{quote_identifier(ref_table)}({quote_identifier(schema.columns[dst][1])})"
                )
        out.append((table, f"CREATE TABLE {quote_identifier(table)} (\n" + ",\n".join(parts) + "\n);"))
    return out


def _format_value(value: object, max_chars: int) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value).replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def format_rows(columns: list[str], rows: list[tuple], max_chars: int = 40) -> str:
    """Rows as a compact pipe-separated table with a header line."""
    lines = [" | ".join(columns)]
    lines += [" | ".join(_format_value(v, max_chars) for v in row) for row in rows]
    return "\n".join(lines)


def sample_rows_comment(db_path: str | Path, table: str, n: int, max_chars: int = 40) -> str:
    """An SQL comment showing the first ``n`` rows of ``table`` ('' when it has none)."""
    with SQLSandbox(db_path, max_rows=n, isolation="none") as box:
        res = box.execute(f"SELECT * FROM {quote_identifier(table)} LIMIT {int(n)}")
    if not res.ok or not res.rows:
        return ""
    body = format_rows(res.columns, res.rows, max_chars).replace("*/", "* /")
    return f"/* {len(res.rows)} example rows from {table}:\n{body}\n*/"


def serialize_schema(
    db_path: str | Path,
    sample_rows: int = 0,
    tables_entry: DatabaseSchema | None = None,
    max_value_chars: int = 40,
) -> str:
    """The schema of ``db_path`` as ``CREATE TABLE`` statements, each optionally followed by sample rows.

    Args:
        db_path: the database (sample rows always come from it).
        sample_rows: rows to show per table (0: none).
        tables_entry: rebuild the statements from this ``tables.json`` entry instead of reading them from the file.
        max_value_chars: longer sample values are cut.
    """
    ddl = tables_json_ddl(tables_entry) if tables_entry is not None else sqlite_ddl(db_path)
    blocks = []
    for table, stmt in ddl:
        block = stmt
        if sample_rows > 0:
            rows = sample_rows_comment(db_path, table, sample_rows, max_value_chars)
            if rows:
                block += "\n" + rows
        blocks.append(block)
    return "\n\n".join(blocks)
