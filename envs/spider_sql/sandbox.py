"""Run untrusted SQL against a SQLite database without letting it write, escape or hang.

Defences, each sufficient for writes on its own, layered because the policy is adversarial by construction:

- the file is opened read-only (URI ``mode=ro``) and ``PRAGMA query_only`` is on;
- an authorizer allows only reading: SELECT, reading columns, calling SQL functions (``load_extension`` refused),
  recursive CTEs and a short list of informational pragmas (``table_info`` and friends, without a value);
  ATTACH, DETACH (and so ``VACUUM INTO``), every write, schema change, transaction and pragma assignment is denied;
- ``SQLITE_LIMIT_ATTACHED`` is 0, extension loading stays disabled, and only one statement runs (SQLite's
  Python binding refuses trailing statements);
- a statement must start with SELECT, WITH or VALUES, and may be at most ``max_query_chars`` long;
- a progress handler interrupts any statement, fetching included, that runs past ``timeout_s`` (wall clock);
- at most ``max_rows`` rows are fetched, and strings and blobs longer than ``max_value_bytes`` are refused.

Every failure comes back as an :class:`ExecutionResult` with ``error`` set; nothing raises.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentgym.envs.spider_sql.sql_text import first_keyword

ALLOWED_STATEMENTS = ("SELECT", "WITH", "VALUES")
"""A query must start with one of these keywords."""

READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
"""Pragmas the policy may call (without a value) to inspect the schema."""

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension"})


@dataclass
class ExecutionResult:
    """What running one query produced."""

    rows: list[tuple] = field(default_factory=list)
    """The rows fetched (at most ``max_rows``)."""
    columns: list[str] = field(default_factory=list)
    """The result's column names."""
    error: str | None = None
    """Why the query failed, or None when it ran."""
    truncated: bool = False
    """True when the query had more than ``max_rows`` rows and only the first ones were kept."""
    timed_out: bool = False
    """True when the time limit interrupted the query (``error`` says so too)."""
    elapsed_s: float = 0.0
    """Wall-clock seconds spent preparing, running and fetching."""

    @property
    def ok(self) -> bool:
        """Whether the query ran without error."""
        return self.error is None


def _authorizer(action: int, arg1: Any, arg2: Any, _db: Any, _trigger: Any) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() in READ_ONLY_PRAGMAS and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _decode_text(b: bytes) -> str:
    # Spider's databases hold a few strings that are not valid UTF-8; the official evaluation drops those bytes.
    return b.decode("utf-8", errors="ignore")


class SQLSandbox:
    """A read-only, time-limited, row-limited SQLite connection for untrusted queries.

    Args:
        db_path: the ``.sqlite`` file; it must exist (it is never created).
        timeout_s: wall-clock limit per query, fetching included.
        max_rows: most rows kept from one query (more set ``truncated``).
        max_query_chars: longest query accepted.
        max_value_bytes: longest string or blob a query may build (SQLite's ``SQLITE_LIMIT_LENGTH``).
    """

    def __init__(
        self,
        db_path: str | Path,
        timeout_s: float = 2.0,
        max_rows: int = 10_000,
        max_query_chars: int = 20_000,
        max_value_bytes: int = 1_000_000,
    ):
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise FileNotFoundError(f"no SQLite database at {self.db_path}")
        self.timeout_s = float(timeout_s)
        self.max_rows = int(max_rows)
        self.max_query_chars = int(max_query_chars)
        self.max_value_bytes = int(max_value_bytes)
        self._conn: sqlite3.Connection | None = None
        self._deadline = 0.0

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self.db_path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.text_factory = _decode_text
            conn.execute("PRAGMA query_only = ON")
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_value_bytes)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, max(self.max_query_chars * 4, 1000))
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(self._progress, 1000)
            self._conn = conn
        return self._conn

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def execute(self, sql: str, max_rows: int | None = None) -> ExecutionResult:
        """Run one query and fetch up to ``max_rows`` rows (default: the sandbox's limit)."""
        limit = self.max_rows if max_rows is None else int(max_rows)
        start = time.monotonic()
        if not isinstance(sql, str):
            return ExecutionResult(error=f"the query must be a string, got {type(sql).__name__}")
        if len(sql) > self.max_query_chars:
            return ExecutionResult(error=f"query too long: {len(sql)} characters, the limit is {self.max_query_chars}")
        if "\x00" in sql:
            return ExecutionResult(error="the query contains a NUL character")
        keyword = first_keyword(sql)
        if keyword not in ALLOWED_STATEMENTS:
            shown = keyword[:20] if keyword else "an empty query"
            return ExecutionResult(error=f"only read-only queries (SELECT, WITH, VALUES) may run, not {shown}")
        conn = self._connect()
        self._deadline = start + self.timeout_s
        cur = None
        try:
            cur = conn.execute(sql)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(limit + 1)
            truncated = len(rows) > limit
            return ExecutionResult(
                rows=[tuple(r) for r in rows[:limit]],
                columns=columns,
                truncated=truncated,
                elapsed_s=time.monotonic() - start,
            )
        except (sqlite3.Error, OverflowError, ValueError, MemoryError) as e:
            elapsed = time.monotonic() - start
            if isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted":
                return ExecutionResult(
                    error=f"query timed out after {self.timeout_s:g} s", timed_out=True, elapsed_s=elapsed
                )
            return ExecutionResult(error=_describe(e), elapsed_s=elapsed)
        finally:
            if cur is not None:
                cur.close()

    def close(self) -> None:
        """Close the connection (a later query reopens it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "SQLSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if msg in ("not authorized", "authorization denied"):
        return "not allowed: this environment only runs read-only queries"
    return msg


def execute_sql(
    db_path: str | Path, sql: str, timeout_s: float = 2.0, max_rows: int = 10_000
) -> ExecutionResult:
    """Run ``sql`` once in a fresh :class:`SQLSandbox` on ``db_path``."""
    with SQLSandbox(db_path, timeout_s=timeout_s, max_rows=max_rows) as box:
        return box.execute(sql)
