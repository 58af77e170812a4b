"""The locked-down SQLite connection and query runner, usable in-process or as a worker process.

Only the standard library is imported here, so the file also runs as a script (``python -I sqlite_worker.py``):
the process-isolated :class:`~agentgym.envs.spider_sql.sandbox.SQLSandbox` starts it, sends it length-prefixed
pickled requests on stdin and reads pickled results on stdout. A query that hangs inside a single SQLite call
(where no progress handler can reach it) or exhausts memory then takes only this process down.
"""

from __future__ import annotations

import pickle
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
"""Pragmas the policy may call to inspect the schema (their argument names a table or an index)."""

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
# printf's repeat count ('%.*c') loops inside one SQLite call, out of the progress handler's reach; without a
# worker process to kill, these are refused.
_IN_PROCESS_DENIED_FUNCTIONS = _DENIED_FUNCTIONS | {"printf", "format"}


def _authorizer(denied_functions: frozenset[str]):
    def authorize(action: int, arg1: Any, arg2: Any, _db: Any, _trigger: Any) -> int:
        if action in _ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if str(arg2).lower() in denied_functions else sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() in READ_ONLY_PRAGMAS:
            return sqlite3.SQLITE_OK  # these take a table or index name, never a setting
        return sqlite3.SQLITE_DENY

    return authorize


def _decode_text(b: bytes) -> str:
    # Spider's databases hold a few strings that are not valid UTF-8; the official evaluation drops those bytes.
    return b.decode("utf-8", errors="ignore")


class Runner:
    """A read-only connection to one database that runs queries under a deadline and a row cap."""

    def __init__(self, db_path: str, max_value_bytes: int, max_sql_bytes: int, in_process: bool):
        uri = Path(db_path).resolve().as_uri() + "?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        self.conn.text_factory = _decode_text
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.execute("PRAGMA temp_store = MEMORY")  # big sorts stay in (limited) memory, never on disk
        if hasattr(self.conn, "setlimit"):  # Python >= 3.11; on 3.10 the authorizer and the time limit remain
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, max_sql_bytes)
        self.conn.set_authorizer(_authorizer(_IN_PROCESS_DENIED_FUNCTIONS if in_process else _DENIED_FUNCTIONS))
        self.deadline = 0.0
        self.conn.set_progress_handler(self._progress, 1000)

    def _progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0

    def run(self, sql: str, max_rows: int, timeout_s: float) -> dict[str, Any]:
        """Run ``sql``; a dict with rows, columns, truncated, and error/timed_out when it failed."""
        start = time.monotonic()
        self.deadline = start + timeout_s
        cur = None
        try:
            cur = self.conn.execute(sql)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(max_rows + 1)
            return {
                "rows": [tuple(r) for r in rows[:max_rows]],
                "columns": columns,
                "truncated": len(rows) > max_rows,
                "elapsed_s": time.monotonic() - start,
            }
        except (sqlite3.Error, sqlite3.Warning, OverflowError, ValueError, MemoryError) as e:
            out: dict[str, Any] = {"elapsed_s": time.monotonic() - start}
            if isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted":
                out.update(error=f"query timed out after {timeout_s:g} s", timed_out=True)
            elif isinstance(e, MemoryError):
                out["error"] = "out of memory: the query needs more memory than the sandbox allows"
            else:
                msg = str(e) or type(e).__name__
                if msg in ("not authorized", "authorization denied"):
                    msg = "not allowed: this environment only runs read-only queries"
                out["error"] = msg
            return out
        finally:
            if cur is not None:
                cur.close()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def send(stream: BinaryIO, obj: Any) -> None:
    """Write one length-prefixed pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(stream: BinaryIO) -> Any:
    """Read one length-prefixed pickle."""
    (n,) = struct.unpack("<Q", _read_exact(stream, 8))
    return pickle.loads(_read_exact(stream, n))


def worker_main() -> None:
    """Serve queries: the first message configures, each later one is (sql, max_rows, timeout_s)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    config = receive(stdin)
    memory_bytes = config.get("memory_bytes")
    if memory_bytes:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        except (ImportError, ValueError, OSError):
            pass  # best effort: not every platform lets a process cap its address space
    try:
        runner = Runner(config["db_path"], config["max_value_bytes"], config["max_sql_bytes"], in_process=False)
    except sqlite3.Error as e:
        send(stdout, {"error": f"cannot open the database: {e}"})
        return
    send(stdout, {"ready": True})
    while True:
        try:
            sql, max_rows, timeout_s = receive(stdin)
        except EOFError:
            break
        send(stdout, runner.run(sql, max_rows, timeout_s))
    runner.close()


if __name__ == "__main__":
    worker_main()
