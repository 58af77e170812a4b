"""Untrusted SQL: the hostile-query corpus never writes, escapes, crashes or hangs."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from agentgym.envs.spider_sql import BUNDLED_DATA_DIR, SQLSandbox, execute_sql

TIMEOUT_S = 0.3


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    """A private copy of a bundled database (so a failure could never damage the shipped files)."""
    src = BUNDLED_DATA_DIR / "database" / "city_library" / "city_library.sqlite"
    dst = tmp_path / "city_library" / "city_library.sqlite"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


def hostile_corpus(tmp: Path) -> list[str]:
    evil = tmp / "evil.sqlite"
    return [
        "DROP TABLE book",
        "DROP TABLE IF EXISTS loan",
        "DELETE FROM book",
        "UPDATE member SET age = 0",
        "INSERT INTO author VALUES (99, 'X', 'Y', 2000)",
        "REPLACE INTO author VALUES (1, 'X', 'Y', 2000)",
        "CREATE TABLE pwned (x)",
        "CREATE TEMP TABLE pwned (x)",
        "CREATE VIEW v AS SELECT 1",
        "CREATE INDEX i ON book(title)",
        "CREATE TRIGGER t AFTER INSERT ON book BEGIN DELETE FROM book; END",
        "ALTER TABLE book RENAME TO gone",
        "ALTER TABLE book ADD COLUMN evil TEXT",
        f"ATTACH DATABASE '{evil}' AS evil",
        f"ATTACH 'file:{evil}?mode=rwc' AS evil",
        "DETACH DATABASE main",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = ON",
        "PRAGMA query_only = OFF",
        "PRAGMA foreign_keys = OFF",
        "VACUUM",
        f"VACUUM INTO '{tmp / 'copy.sqlite'}'",
        "REINDEX",
        "ANALYZE",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "SAVEPOINT s1",
        "SELECT load_extension('/tmp/evil.so')",
        "WITH x AS (SELECT 1) DELETE FROM book",
        "WITH x AS (SELECT 1) INSERT INTO author SELECT 100, 'a', 'b', 1 FROM x",
        "SELECT 1; DROP TABLE book",
        "SELECT 1; SELECT 2",
        "SELECT * FROM book WHERE title = ''; DELETE FROM book; --'",
        "SELEC * FROM book",
        ")))(((",
        "",
        "   ",
        "-- only a comment",
        "\x00SELECT 1",
        "SELECT 'a\x00b'",
        "SELECT * FROM " + "x" * 1_000_000,
        "SELECT " + "1 + " * 300_000 + "1",
        "SELECT randomblob(2000000000)",
        "SELECT zeroblob(500000000)",
        "SELECT printf('%.*c', 100000000, 'x')",
        "SELECT printf('%.*c', 2147483647, 'x')",  # loops inside one SQLite call, out of the progress handler's reach
        "SELECT format('%.*c', 2147483647, 'x')",
        "SELECT replace(hex(zeroblob(10000000)), '0', 'ab')",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r ORDER BY n DESC",
        "SELECT count(*) FROM loan a, loan b, loan c, loan d, loan e",
        "SELECT a.title FROM book a, book b, book c, book d ORDER BY random()",
        "SELECT * FROM sqlite_master; PRAGMA writable_schema = 1",
    ]


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_hostile_corpus_only_yields_errors_and_changes_nothing(db: Path, tmp_path: Path, isolation: str) -> None:
    shipped = {p: sha256(p) for p in sorted((BUNDLED_DATA_DIR / "database").rglob("*.sqlite"))}
    before = sha256(db)
    files_before = sorted(p.name for p in tmp_path.rglob("*"))
    box = SQLSandbox(db, timeout_s=TIMEOUT_S, max_rows=1000, isolation=isolation, kill_grace_s=0.5)
    for sql in hostile_corpus(tmp_path):
        start = time.monotonic()
        res = box.execute(sql)
        elapsed = time.monotonic() - start
        # A restarted worker adds its start-up time; nothing may run much past the limit.
        assert elapsed < TIMEOUT_S + 3.0, f"{sql[:60]!r} ran {elapsed:.2f} s"
        if sql.startswith("SELECT * FROM sqlite_master") or sql.startswith("SELECT 1; "):
            assert not res.ok  # a second statement is refused, not silently dropped
        elif res.ok:
            # The only statements allowed to run are harmless reads (e.g. a NUL-free literal).
            assert sql.upper().lstrip().startswith(("SELECT", "WITH")), sql[:60]
        else:
            assert isinstance(res.error, str) and res.error
    # The connection still works after the corpus.
    assert box.execute("SELECT count(*) FROM book").rows == [(70,)]
    box.close()
    assert sha256(db) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == files_before  # no attached or vacuumed file appeared
    assert {p: sha256(p) for p in shipped} == shipped


def test_writes_are_refused_with_a_clear_message(db: Path) -> None:
    res = execute_sql(db, "DROP TABLE book")
    assert not res.ok and "read-only" in (res.error or "")
    res = execute_sql(db, "WITH x AS (SELECT 1) DELETE FROM book")
    assert not res.ok and "read-only" in (res.error or "")
    assert execute_sql(db, "SELECT count(*) FROM book").rows == [(70,)]


def test_endless_recursive_cte_is_interrupted(db: Path) -> None:
    start = time.monotonic()
    res = execute_sql(db, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT max(n) FROM r",
                      timeout_s=TIMEOUT_S)
    assert res.timed_out and "timed out" in (res.error or "")
    assert time.monotonic() - start < TIMEOUT_S + 1.0


def test_huge_cross_join_is_interrupted(db: Path) -> None:
    res = execute_sql(db, "SELECT count(*) FROM loan a, loan b, loan c, loan d", timeout_s=TIMEOUT_S)
    assert res.timed_out


def test_time_limit_covers_fetching(db: Path) -> None:
    endless_rows = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r"
    with SQLSandbox(db, timeout_s=TIMEOUT_S, max_rows=10**9) as box:
        res = box.execute(endless_rows)
    assert res.timed_out


def test_row_cap(db: Path) -> None:
    with SQLSandbox(db, max_rows=100) as box:
        res = box.execute("SELECT a.loan_id FROM loan a, loan b")
        assert res.ok and res.truncated and len(res.rows) == 100
        small = box.execute("SELECT loan_id FROM loan", max_rows=500)
        assert small.ok and not small.truncated and len(small.rows) == 170


def test_long_query_is_refused_before_running(db: Path) -> None:
    res = execute_sql(db, "SELECT 1 -- " + "x" * 1_000_000)
    assert not res.ok and "too long" in (res.error or "")


def test_multiple_statements_are_refused(db: Path) -> None:
    res = execute_sql(db, "SELECT 1; SELECT 2")
    assert not res.ok and "one statement" in (res.error or "")
    assert execute_sql(db, "SELECT 1;").rows == [(1,)]  # a trailing semicolon is fine


def test_reads_and_schema_pragmas_work(db: Path) -> None:
    with SQLSandbox(db) as box:
        assert box.execute("PRAGMA table_info(book)").ok
        assert box.execute("SELECT name FROM sqlite_master WHERE type = 'table'").ok
        res = box.execute("SELECT title, pages FROM book ORDER BY pages DESC LIMIT 1")
        assert res.ok and res.columns == ["title", "pages"] and res.rows[0][1] == 1104


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.sqlite"
    with pytest.raises(FileNotFoundError):
        SQLSandbox(path)
    assert not path.exists()


def test_invalid_utf8_text_is_decoded_leniently(tmp_path: Path) -> None:
    path = tmp_path / "latin.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (s TEXT)")
    conn.execute("INSERT INTO t VALUES (CAST(X'4361666503' || X'e9' AS TEXT))")
    conn.commit()
    conn.close()
    res = execute_sql(path, "SELECT s FROM t")
    assert res.ok and res.rows[0][0].startswith("Cafe")


def test_a_single_long_sqlite_call_is_killed_and_the_worker_restarts(db: Path) -> None:
    with SQLSandbox(db, timeout_s=TIMEOUT_S, kill_grace_s=0.5) as box:
        start = time.monotonic()
        res = box.execute("SELECT printf('%.*c', 2147483647, 'x')")
        assert res.timed_out and time.monotonic() - start < TIMEOUT_S + 2.0
        assert box.execute("SELECT count(*) FROM member").rows == [(45,)]


def test_in_process_mode_refuses_printf(db: Path) -> None:
    res = execute_sql(db, "SELECT printf('%.*c', 2147483647, 'x')", isolation="none")
    assert not res.ok and "printf" in (res.error or "")
    assert execute_sql(db, "SELECT upper(title) FROM book LIMIT 1", isolation="none").ok


def test_worker_memory_is_capped(db: Path) -> None:
    with SQLSandbox(db, timeout_s=5.0, memory_limit_mb=100) as box:
        res = box.execute("SELECT randomblob(900000) AS b FROM loan ORDER BY b")
        assert not res.ok and "memory" in (res.error or "")
        assert box.execute("SELECT 1").rows == [(1,)]


def test_a_dead_worker_is_replaced(db: Path) -> None:
    import os
    import signal

    with SQLSandbox(db) as box:
        assert box.execute("SELECT 1").ok
        assert box._proc is not None
        os.kill(box._proc.pid, signal.SIGKILL)
        box._proc.wait()
        assert box.execute("SELECT count(*) FROM author").rows == [(24,)]


def test_values_survive_the_worker_round_trip(db: Path) -> None:
    with SQLSandbox(db) as box:
        res = box.execute("SELECT 1, 1.5, NULL, 'caf\u00e9', x'00ff', 9223372036854775807")
    assert res.rows == [(1, 1.5, None, "caf\u00e9", b"\x00\xff", 9223372036854775807)]
    assert isinstance(res.rows[0][1], float) and isinstance(res.rows[0][0], int)
