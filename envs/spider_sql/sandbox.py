"""Run untrusted SQL against a SQLite database without letting it write, escape, crash the caller or hang.

Defences, layered because the policy is adversarial by construction:

- the file is opened read-only (URI ``mode=ro``) and ``PRAGMA query_only`` is on;
- an authorizer allows only reading: SELECT, reading columns, calling SQL functions, recursive CTEs and a short
  list of informational pragmas (``table_info`` and friends). ATTACH, DETACH (and so ``VACUUM INTO``), every
  write, schema change, transaction and pragma assignment is denied, as are the functions ``load_extension`` and
  ``fts3_tokenizer``;
- ``SQLITE_LIMIT_ATTACHED`` is 0, extension loading stays disabled, and only one statement runs (SQLite's
  Python binding refuses trailing statements);
- a statement must start with SELECT, WITH, VALUES or PRAGMA, and may be at most ``max_query_chars`` long;
- a progress handler interrupts any statement, fetching included, that runs past ``timeout_s`` (wall clock);
- at most ``max_rows`` rows are fetched, and strings and blobs longer than ``max_value_bytes`` are refused;
- with ``isolation="process"`` (the default on POSIX systems) queries run in a small worker process with capped
  memory (``memory_limit_mb``); a query still running ``kill_grace_s`` after its time limit (one SQLite call
  can run long between two progress checks) or crashing SQLite takes down only the worker, which is restarted
  for the next query. With ``isolation="none"`` queries run in this process, and ``printf``/``format`` (whose
  repeat counts can loop inside a single call) are refused.

Every failure comes back as an :class:`ExecutionResult` with ``error`` set; nothing raises.
"""

from __future__ import annotations

import os
import pickle
import select
import sqlite3
import struct
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from agentgym.envs.spider_sql import sqlite_worker
from agentgym.envs.spider_sql.sql_text import first_keyword
from agentgym.envs.spider_sql.sqlite_worker import READ_ONLY_PRAGMAS

__all__ = ["ALLOWED_STATEMENTS", "READ_ONLY_PRAGMAS", "ExecutionResult", "SQLSandbox", "execute_sql"]

ALLOWED_STATEMENTS = ("SELECT", "WITH", "VALUES", "PRAGMA")
"""A query must start with one of these keywords (the authorizer then decides which pragmas may run)."""


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


def _stop(proc: subprocess.Popen) -> None:
    """End a worker process and release its pipes."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _read_exact(fd: int, n: int, deadline: float) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_message(proc: subprocess.Popen, deadline: float) -> dict | None:
    """One length-prefixed pickle from the worker, or None on timeout or end of stream."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    head = _read_exact(fd, 8, deadline)
    if head is None:
        return None
    # The worker has answered; give a large result time to arrive.
    body = _read_exact(fd, struct.unpack("<Q", head)[0], max(deadline, time.monotonic() + 30.0))
    return None if body is None else pickle.loads(body)


class SQLSandbox:
    """A read-only, time-limited, row-limited SQLite connection for untrusted queries.

    Args:
        db_path: the ``.sqlite`` file; it must exist (it is never created).
        timeout_s: wall-clock limit per query, fetching included.
        max_rows: most rows kept from one query (more set ``truncated``).
        max_query_chars: longest query accepted.
        max_value_bytes: longest string or blob a query may build (SQLite's ``SQLITE_LIMIT_LENGTH``).
        isolation: ``process`` (queries run in a worker process that is killed when it overruns; the default on
            POSIX systems) or ``none`` (in this process; ``printf`` and ``format`` are then refused).
        memory_limit_mb: address-space cap of the worker process.
        kill_grace_s: how long past ``timeout_s`` a worker may stay silent before it is killed.
    """

    def __init__(
        self,
        db_path: str | Path,
        timeout_s: float = 2.0,
        max_rows: int = 10_000,
        max_query_chars: int = 20_000,
        max_value_bytes: int = 1_000_000,
        isolation: str | None = None,
        memory_limit_mb: int = 1024,
        kill_grace_s: float = 1.0,
    ):
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise FileNotFoundError(f"no SQLite database at {self.db_path}")
        if isolation is None:
            isolation = "process" if os.name == "posix" else "none"
        if isolation not in ("process", "none"):
            raise ValueError(f"isolation must be 'process' or 'none', got {isolation!r}")
        if isolation == "process" and os.name != "posix":
            raise ValueError("isolation='process' needs a POSIX system; use isolation='none'")
        self.isolation = isolation
        self.timeout_s = float(timeout_s)
        self.max_rows = int(max_rows)
        self.max_query_chars = int(max_query_chars)
        self.max_value_bytes = int(max_value_bytes)
        self.memory_limit_mb = int(memory_limit_mb)
        self.kill_grace_s = float(kill_grace_s)
        self._runner: sqlite_worker.Runner | None = None
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def _max_sql_bytes(self) -> int:
        return max(self.max_query_chars * 4, 1000)

    # -- worker process ------------------------------------------------------------------------------------------

    def _start_worker(self) -> str | None:
        """Start the worker; returns why it failed, or None."""
        proc = subprocess.Popen(
            [sys.executable, "-I", sqlite_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        config = {
            "db_path": str(self.db_path),
            "max_value_bytes": self.max_value_bytes,
            "max_sql_bytes": self._max_sql_bytes,
            "memory_bytes": self.memory_limit_mb * 2**20 if self.memory_limit_mb > 0 else None,
        }
        try:
            assert proc.stdin is not None
            sqlite_worker.send(proc.stdin, config)
        except OSError as e:
            _stop(proc)
            return f"cannot start the SQL worker: {e}"
        reply = _read_message(proc, time.monotonic() + 30.0)
        if reply is None or "error" in reply:
            _stop(proc)
            return (reply or {}).get("error") or "the SQL worker did not start"
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop, proc)
        return None

    def _stop_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once
        self._proc = None
        self._finalizer = None

    def _execute_in_worker(self, sql: str, limit: int, timeout: float, start: float) -> ExecutionResult:
        for _ in range(2):  # a worker that died between queries is restarted once
            if self._proc is None:
                why = self._start_worker()
                if why is not None:
                    return ExecutionResult(error=why, elapsed_s=time.monotonic() - start)
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            try:
                sqlite_worker.send(proc.stdin, (sql, limit, timeout))
                break
            except OSError:
                self._stop_worker()
        else:
            return ExecutionResult(error="the SQL worker could not be reached", elapsed_s=time.monotonic() - start)
        reply = _read_message(proc, start + timeout + self.kill_grace_s)
        if reply is None:
            running = proc.poll() is None
            self._stop_worker()
            elapsed = time.monotonic() - start
            if running:
                return ExecutionResult(error=f"query timed out after {timeout:g} s", timed_out=True, elapsed_s=elapsed)
            return ExecutionResult(error="the query crashed the SQL engine", elapsed_s=elapsed)
        return ExecutionResult(**reply)

    # -- queries -------------------------------------------------------------------------------------------------

    def execute(self, sql: str, max_rows: int | None = None, timeout_s: float | None = None) -> ExecutionResult:
        """Run one query and fetch up to ``max_rows`` rows, within ``timeout_s`` (defaults: the sandbox's)."""
        limit = self.max_rows if max_rows is None else int(max_rows)
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
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
            return ExecutionResult(error=f"only read-only queries (SELECT, WITH) may run, not {shown}")
        if self.isolation == "process":
            return self._execute_in_worker(sql, limit, timeout, start)
        if self._runner is None:
            try:
                self._runner = sqlite_worker.Runner(
                    str(self.db_path), self.max_value_bytes, self._max_sql_bytes, in_process=True
                )
            except sqlite3.Error as e:
                return ExecutionResult(error=f"cannot open the database: {e}")
        return ExecutionResult(**self._runner.run(sql, limit, timeout))

    def close(self) -> None:
        """Close the connection and stop the worker (a later query reopens them)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        self._stop_worker()

    def __enter__(self) -> "SQLSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def execute_sql(
    db_path: str | Path, sql: str, timeout_s: float = 2.0, max_rows: int = 10_000, isolation: str | None = None
) -> ExecutionResult:
    """Run ``sql`` once in a fresh :class:`SQLSandbox` on ``db_path``."""
    with SQLSandbox(db_path, timeout_s=timeout_s, max_rows=max_rows, isolation=isolation) as box:
        return box.execute(sql)
