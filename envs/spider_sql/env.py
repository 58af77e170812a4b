"""The Spider text-to-SQL environment: write SQL, see what it returns, revise, submit.

Episode protocol (told to the policy in the system prompt):

1. The opening messages are a system message with the rules and a user message with the database schema
   (``CREATE TABLE`` statements, optionally sample rows) and the question.
2. Each reply should hold one SQLite query, preferably in a fenced block (```sql ... ```). The query taken from a
   reply is the last fenced block (one tagged ``sql``/``sqlite`` preferred); without a fence, the text from the
   first upper-case ``SELECT`` or ``WITH`` (else a line starting with ``select``/``with`` in any case, else the
   first ``select``) to the next blank line; in both cases up to the first ``;`` outside a string or comment.
3. A reply that contains the submit marker (``SUBMIT`` by default, as a separate word outside code) submits: the
   final query is the query in that reply, or, when it has none, the last query of an earlier reply. The episode
   then ends and is scored.
4. Otherwise the env runs the query (read-only, time-limited; see :mod:`.sandbox`) and answers with a short
   preview of the result (columns, the first rows, the row count) or the error, and the number of turns left.
   A reply with neither a query nor the marker gets a format reminder.
5. After ``max_turns`` replies the last query written is submitted. With ``max_turns=1`` the first reply is final
   and the policy gets no feedback (classic single-shot Spider).

Reward (all at the end, except the per-reply format penalty): ``reward_correct`` when the final query's results
match the gold query's under the official Spider execution rules (:mod:`.evaluation`), else ``reward_executes``
when the final query at least runs, else ``reward_error`` (also for no query at all). Each reply with neither a
query nor the marker adds ``reward_invalid_reply``, and each reply whose query repeats one that already failed to
run in this episode (the same text, up to whitespace) adds ``reward_repeated_error``: the error was ignored.
Defaults give the plain 1/0 execution accuracy.

The episode always ends with ``terminated=True`` (submitting and running out of turns both end the task and
score it); ``truncated`` is left to the token-level wrapper's context limit. The final ``info`` holds
``success``, ``correct``, ``final_query``, ``gold_query``, ``end_reason`` (``submitted`` or ``max_turns``),
``match_reason`` (``match``, ``mismatch``, ``error``, ``timeout``, ``too_many_rows``, ``no_query``, or
``gold_error`` when the example's own gold query fails: scored as an error, with a warning), ``difficulty``,
``db_id``, ``example_index``, and ``correct_turn_1`` ... ``correct_turn_<max_turns>``: whether the query standing
after each reply (the last one written by then; after the episode ended, the final one) matches, so evaluation
reports accuracy by turn and self-correction's gain is a number (each distinct query is scored once).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import gymnasium as gym

from agentgym.envs.spider_sql.data import DatabaseSchema, SpiderExample, load_spider, load_tables
from agentgym.envs.spider_sql.evaluation import GoldQueryError, accuracy_report, execution_match, suite_db_paths
from agentgym.envs.spider_sql.sandbox import ExecutionResult, SQLSandbox
from agentgym.envs.spider_sql.schema import format_rows, serialize_schema
from agentgym.envs.spider_sql.sql_text import tokenize
from agentgym.message_env import Message, MessageEnv

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_START_RE = re.compile(r"\b(?:SELECT|WITH)\b")
_START_LINE_RE = re.compile(r"^[ \t]*(select|with)\b", re.IGNORECASE | re.MULTILINE)
_START_ANY_RE = re.compile(r"\bselect\b", re.IGNORECASE)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")


def _first_statement(sql: str) -> str:
    """``sql`` up to its first ``;`` outside a string, literal or comment, stripped."""
    out = []
    for tok in tokenize(sql):
        if tok.kind == "punct" and tok.text == ";":
            break
        out.append(tok.text)
    return "".join(out).strip()


def _strip_code(text: str) -> str:
    return _FENCE_RE.sub(" ", text)


def extract_sql(text: str) -> str | None:
    """The query in a policy reply (see the module docstring, rule 2), or None when there is none."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    if blocks:
        tagged = [body for lang, body in blocks if lang in ("sql", "sqlite")]
        body = (tagged or [b for _, b in blocks])[-1]
        sql = _first_statement(body)
        return sql or None
    m = _START_RE.search(text) or _START_LINE_RE.search(text) or _START_ANY_RE.search(text)
    if not m:
        return None
    sql = _first_statement(_BLANK_LINE_RE.split(text[m.start():], maxsplit=1)[0])
    return sql or None


def is_submission(text: str, marker: str = "SUBMIT") -> bool:
    """Whether a reply contains the submit ``marker`` as a separate word outside fenced code."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(marker)}(?![A-Za-z0-9_])", _strip_code(text)) is not None


def format_result(res: ExecutionResult, preview_rows: int = 5, max_value_chars: int = 40) -> str:
    """A short text view of a query's outcome: the error, or columns, the first rows and the row count."""
    if not res.ok:
        return f"Error: {res.error}"
    if not res.rows:
        return "The query ran and returned no rows." + (f"\nColumns: {', '.join(res.columns)}" if res.columns else "")
    n = f"more than {len(res.rows)}" if res.truncated else str(len(res.rows))
    shown = res.rows[:preview_rows]
    head = f"The query returned {n} row{'s' if n != '1' else ''}"
    head += ":" if len(shown) == len(res.rows) and not res.truncated else f"; the first {len(shown)}:"
    return head + "\n" + format_rows(res.columns, shown, max_value_chars)


def _replies(n: int) -> str:
    return f"{n} {'reply' if n == 1 else 'replies'}"


class SpiderSQLEnv(MessageEnv):
    """Text-to-SQL over Spider-format data, with execution feedback and revision (see the module docstring).

    Args:
        split: ``train``, ``dev``, ``test``, ``train_spider`` or ``train_others``.
        data_dir: a Spider-format directory (default: the bundled dataset).
        db_ids: keep only questions over these databases.
        max_examples: keep at most this many questions (the first ones).
        examples: use these examples instead of loading (``split``, ``data_dir``... are then ignored).
        max_turns: replies allowed per episode (1: single shot, no feedback).
        sample_rows: example rows shown per table in the prompt (0: schema only).
        schema_source: ``sqlite`` (the CREATE TABLE statements stored in the database) or ``tables_json``
            (statements rebuilt from tables.json).
        preview_rows: result rows shown in a feedback message.
        submit_marker: the word that submits.
        reward_correct: final reward when the final query is correct.
        reward_executes: final reward when it runs but is wrong.
        reward_error: final reward when it fails or there is none.
        reward_invalid_reply: added for each reply with neither a query nor the marker.
        reward_repeated_error: added for each reply whose query repeats one that failed earlier in the episode.
        keep_distinct: score without removing DISTINCT (the official evaluation removes it by default).
        use_test_suite: score on every ``*.sqlite`` in the database's folder (a test suite, as the official
            evaluation does), not only on ``<db_id>.sqlite``.
        timeout_s: time limit per query run.
        max_result_rows: most rows fetched per query (a prediction with more scores 0).
        system_prompt: replace the built-in instructions (``{max_turns}`` and ``{marker}`` are filled in).
        task_order: ``random`` (each reset draws a question with ``np_random``) or ``by_seed`` (``reset(seed=s)``
            serves question ``s mod len(examples)``, a reset without a seed the next one), so that N consecutive
            seeds visit every question once, e.g. for a full dev-set evaluation.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        split: str = "train",
        data_dir: str | Path | None = None,
        db_ids: Iterable[str] | None = None,
        max_examples: int | None = None,
        examples: Sequence[SpiderExample] | None = None,
        max_turns: int = 3,
        sample_rows: int = 0,
        schema_source: str = "sqlite",
        preview_rows: int = 5,
        submit_marker: str = "SUBMIT",
        reward_correct: float = 1.0,
        reward_executes: float = 0.0,
        reward_error: float = 0.0,
        reward_invalid_reply: float = 0.0,
        reward_repeated_error: float = 0.0,
        keep_distinct: bool = False,
        use_test_suite: bool = True,
        timeout_s: float = 2.0,
        max_result_rows: int = 100_000,
        system_prompt: str | None = None,
        task_order: str = "random",
    ):
        super().__init__()
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if schema_source not in ("sqlite", "tables_json"):
            raise ValueError(f"schema_source must be 'sqlite' or 'tables_json', got {schema_source!r}")
        if task_order not in ("random", "by_seed"):
            raise ValueError(f"task_order must be 'random' or 'by_seed', got {task_order!r}")
        if not submit_marker or not submit_marker.strip():
            raise ValueError("submit_marker must be a non-empty word")
        self.examples = list(examples) if examples is not None else load_spider(
            data_dir, split=split, db_ids=db_ids, max_examples=max_examples
        )
        if not self.examples:
            raise ValueError(f"no Spider examples to serve (split={split!r}, db_ids={db_ids!r}, data_dir={data_dir!r})")
        self.split = split
        self.data_dir = data_dir
        self.max_turns = int(max_turns)
        self.sample_rows = int(sample_rows)
        self.schema_source = schema_source
        self.preview_rows = int(preview_rows)
        self.submit_marker = submit_marker.strip()
        self.reward_correct = float(reward_correct)
        self.reward_executes = float(reward_executes)
        self.reward_error = float(reward_error)
        self.reward_invalid_reply = float(reward_invalid_reply)
        self.reward_repeated_error = float(reward_repeated_error)
        self.keep_distinct = bool(keep_distinct)
        self.use_test_suite = bool(use_test_suite)
        self.timeout_s = float(timeout_s)
        self.max_result_rows = int(max_result_rows)
        self.system_prompt = system_prompt
        self.task_order = task_order
        self._tables: dict[tuple[Path, str], dict[str, DatabaseSchema]] = {}
        self._schemas: dict[tuple[Path, str], str] = {}
        self._sandboxes: dict[Path, SQLSandbox] = {}
        self.example: SpiderExample | None = None
        self.turn = 0
        self.last_query: str | None = None
        self.done = True
        self._index = -1

    # -- prompt ------------------------------------------------------------------------------------------------

    def instructions(self) -> str:
        """The system message."""
        if self.system_prompt is not None:
            return self.system_prompt.format(max_turns=self.max_turns, marker=self.submit_marker)
        if self.max_turns == 1:
            return (
                "You are an expert in SQLite. Answer the user's question about a database with one SQLite query.\n"
                "Write the query in a ```sql code block. It is run once and scored on whether its result "
                "matches the correct answer; you get no feedback."
            )
        m = self.submit_marker
        return (
            "You are an expert in SQLite. Answer the user's question about a database with one SQLite query.\n"
            "Write the query in a ```sql code block. The database runs it and shows you the first rows of the "
            "result, or the error. You may then write a corrected query in a new ```sql block.\n"
            f"When the result answers the question, reply {m} to submit your last query (or write {m} after "
            f"your final ```sql block). You have {_replies(self.max_turns)}; after the last one your "
            "last query is submitted. Only the submitted query is scored, on whether its result matches the "
            "correct answer."
        )

    def schema_text(self, example: SpiderExample) -> str:
        """The serialized schema of ``example``'s database (cached per database)."""
        key = (example.db_path, example.db_id)
        if key not in self._schemas:
            entry = None
            if self.schema_source == "tables_json":
                root = example.db_path.parents[2]  # <data_dir>/<database folder>/<db_id>/<db_id>.sqlite
                if (root, example.split) not in self._tables:
                    self._tables[(root, example.split)] = load_tables(root, example.split)
                entry = self._tables[(root, example.split)][example.db_id]
            self._schemas[key] = serialize_schema(example.db_path, self.sample_rows, entry)
        return self._schemas[key]

    def question_message(self, example: SpiderExample) -> str:
        """The user message: schema and question."""
        return (
            f"Database: {example.db_id}\n\n{self.schema_text(example)}\n\nQuestion: {example.question}"
        )

    # -- episode -----------------------------------------------------------------------------------------------

    def _sandbox(self, path: Path) -> SQLSandbox:
        if path not in self._sandboxes:
            self._sandboxes[path] = SQLSandbox(path, timeout_s=self.timeout_s, max_rows=self.max_result_rows)
        return self._sandboxes[path]

    @property
    def num_tasks(self) -> int:
        """How many questions the env serves (``task_order="by_seed"`` visits them all in as many seeds)."""
        return len(self.examples)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[list[Message], dict]:
        """Start an episode on ``options["index"]`` (a position in ``self.examples``) if given, else on the
        question ``task_order`` picks."""
        gym.Env.reset(self, seed=seed)  # seeds self.np_random (MessageEnv.reset itself is abstract)
        options = options or {}
        if "index" in options:
            index = int(options["index"])
            if not 0 <= index < len(self.examples):
                raise IndexError(f"options['index'] = {index} is outside 0..{len(self.examples) - 1}")
        elif self.task_order == "by_seed":
            index = (seed if seed is not None else self._index + 1) % len(self.examples)
        else:
            index = int(self.np_random.integers(len(self.examples)))
        self.example = self.examples[index]
        self.turn = 0
        self.last_query = None
        self._standing: list[str | None] = []  # the query standing after each reply
        self._failed: set[str] = set()  # queries of this episode that failed to run, whitespace collapsed
        self.done = False
        self._index = index
        messages = [
            {"role": "system", "content": self.instructions()},
            {"role": "user", "content": self.question_message(self.example)},
        ]
        info = {
            "db_id": self.example.db_id,
            "question": self.example.question,
            "difficulty": self.example.difficulty,
            "example_index": index,
            "turn": 0,
        }
        return messages, info

    def step(self, text: str) -> tuple[list[Message], float, bool, bool, dict]:  # type: ignore[override]
        """Take the policy's reply; see the module docstring for the protocol."""
        if self.done or self.example is None:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        if not isinstance(text, str):
            raise TypeError(f"step() takes the reply text (str), got {type(text).__name__}")
        self.turn += 1
        query = extract_sql(text)
        submitted = is_submission(text, self.submit_marker)
        reward = 0.0
        if query is not None:
            self.last_query = query
            if " ".join(query.split()) in self._failed:
                reward += self.reward_repeated_error
        elif not submitted:
            reward += self.reward_invalid_reply
        self._standing.append(self.last_query)
        if submitted or self.turn >= self.max_turns:
            return self._finish(reward, "submitted" if submitted else "max_turns")
        left = self.max_turns - self.turn
        if query is None:
            body = (
                "I could not find a SQL query in your reply. Write one SQLite query in a ```sql code block"
                f", or reply {self.submit_marker} to submit your last query."
                if self.last_query is not None
                else "I could not find a SQL query in your reply. Write one SQLite query in a ```sql code block."
            )
        else:
            res = self._sandbox(self.example.db_path).execute(query, max_rows=max(self.preview_rows, 1000))
            body = format_result(res, self.preview_rows)
            if not res.ok:
                self._failed.add(" ".join(query.split()))
            body += f"\n\nYou have {_replies(left)} left. Write a corrected query, or reply " \
                    f"{self.submit_marker} to submit this one."
        info = {"turn": self.turn, "query": query, "submitted": False}
        return [{"role": "user", "content": body}], reward, False, False, info

    def _finish(self, reward: float, end_reason: str) -> tuple[list[Message], float, bool, bool, dict]:
        ex = self.example
        assert ex is not None
        self.done = True
        final = self.last_query
        if final is None:
            correct, match_reason, final_reward = False, "no_query", self.reward_error
            verdicts: dict[str, Any] = {}
        else:
            verdicts = {final: self._verdict(final, warn=True)}
            verdict = verdicts[final]
            correct = verdict is not None and verdict.correct
            match_reason = verdict.reason if verdict is not None else "gold_error"
            if verdict is None:
                final_reward = self.reward_error
            elif correct:
                final_reward = self.reward_correct
            elif verdict.pred.ok:
                final_reward = self.reward_executes
            else:
                final_reward = self.reward_error
        info = {
            "turn": self.turn,
            "submitted": end_reason == "submitted",
            "end_reason": end_reason,
            "success": correct,
            "correct": correct,
            "final_query": final,
            "gold_query": ex.query,
            "match_reason": match_reason,
            "difficulty": ex.difficulty,
            "db_id": ex.db_id,
            "example_index": self._index,
        }
        standing = self._standing + [final] * (self.max_turns - len(self._standing))
        for k, query in enumerate(standing, start=1):
            if query is not None and query not in verdicts:
                verdicts[query] = self._verdict(query, warn=False)
            v = verdicts.get(query) if query is not None else None
            info[f"correct_turn_{k}"] = v is not None and v.correct
        return [], reward + final_reward, True, False, info

    def _verdict(self, query: str, warn: bool) -> Any:
        """The execution match of ``query`` against the gold query (None when the gold query itself fails)."""
        ex = self.example
        assert ex is not None
        paths = suite_db_paths(ex.db_path) if self.use_test_suite else [ex.db_path]
        try:
            return execution_match(
                query,
                ex.query,
                paths,
                keep_distinct=self.keep_distinct,
                timeout_s=self.timeout_s,
                max_rows=self.max_result_rows,
                sandboxes={p: self._sandbox(p) for p in paths},
            )
        except GoldQueryError as e:
            if warn:  # a broken example in the user's data: score it 0 and say so, rather than stop a training run
                warnings.warn(f"{ex.split} example {ex.index} ({ex.db_id}) cannot be scored: {e}", stacklevel=3)
            return None

    @staticmethod
    def eval_report(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
        """What ``agentgym eval`` reports beyond the success rate: execution accuracy by difficulty, and by turn
        (the query standing after reply k) when episodes had more than one reply."""
        out = {"by difficulty": accuracy_report(
            {"correct": r["success"], "difficulty": r.get("difficulty", "unknown")} for r in records)}
        turns = sorted({int(k.rsplit("_", 1)[1]) for r in records for k in r if k.startswith("correct_turn_")})
        if len(turns) > 1:
            out["by turn"] = {f"after reply {k}": {"count": len(records), "accuracy": sum(
                bool(r.get(f"correct_turn_{k}", False)) for r in records) / max(len(records), 1)} for k in turns}
        return out

    def close(self) -> None:
        """Close the database connections."""
        for box in self._sandboxes.values():
            box.close()
        self._sandboxes.clear()
        super().close()
