"""Spider text-to-SQL: a multi-turn environment with execution feedback, scored as the official evaluation.

- :class:`SpiderSQLEnv`: the :class:`~agentgym.MessageEnv` (registered as ``agentgym/SpiderSQL-v0``).
- :func:`load_spider`: read a Spider-format directory (the bundled dataset by default, :data:`BUNDLED_DATA_DIR`).
- :func:`execution_match` / :func:`results_match`: the official execution-accuracy rules.
- :class:`SQLSandbox`: read-only, time- and row-limited execution of untrusted SQL.
- :func:`serialize_schema`: the schema as CREATE TABLE statements, with optional sample rows.
- :mod:`.demonstrations`: gold queries as SFT data (``python -m agentgym.envs.spider_sql.demonstrations``).
"""

from agentgym.envs.spider_sql.data import (
    BUNDLED_DATA_DIR,
    DatabaseSchema,
    SpiderExample,
    find_database,
    list_db_ids,
    load_spider,
    load_tables,
)
from agentgym.envs.spider_sql.env import SpiderSQLEnv, extract_sql, format_result, is_submission
from agentgym.envs.spider_sql.evaluation import (
    GoldQueryError,
    MatchResult,
    accuracy_report,
    execution_match,
    format_report,
    normalize_query,
    order_matters,
    results_match,
    suite_db_paths,
)
from agentgym.envs.spider_sql.sandbox import ExecutionResult, SQLSandbox, execute_sql
from agentgym.envs.spider_sql.schema import serialize_schema
from agentgym.envs.spider_sql.sql_text import classify_hardness

__all__ = [
    "BUNDLED_DATA_DIR",
    "DatabaseSchema",
    "ExecutionResult",
    "GoldQueryError",
    "MatchResult",
    "SQLSandbox",
    "SpiderExample",
    "SpiderSQLEnv",
    "accuracy_report",
    "classify_hardness",
    "execute_sql",
    "execution_match",
    "extract_sql",
    "find_database",
    "format_report",
    "format_result",
    "is_submission",
    "list_db_ids",
    "load_spider",
    "load_tables",
    "normalize_query",
    "order_matters",
    "results_match",
    "serialize_schema",
    "suite_db_paths",
]
