"""The Spider episode: prompt, SQL extraction, submit protocol, feedback, rewards, token-level wrapping."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agentgym.envs.spider_sql import SpiderSQLEnv, extract_sql, is_submission, load_spider

# SQL extraction and the submit marker ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "sql"),
    [
        ("```sql\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("Here:\n```sqlite\nSELECT a FROM t;\n```\nDone.", "SELECT a FROM t"),
        ("```\nSELECT b FROM u\n```", "SELECT b FROM u"),
        ("```sql\nSELECT 1\n```\nor better\n```sql\nSELECT 2\n```", "SELECT 2"),
        ("```sql\nSELECT 1\n```\n```text\nnot sql\n```", "SELECT 1"),
        ("The answer is SELECT name FROM t WHERE x = 'a;b'; this selects names.", "SELECT name FROM t WHERE x = 'a;b'"),
        ("WITH r(n) AS (SELECT 1) SELECT n FROM r", "WITH r(n) AS (SELECT 1) SELECT n FROM r"),
        ("I start with the table: SELECT a FROM t\n\nThis lists a.", "SELECT a FROM t"),
        ("we select names:\nselect name from t", "select name from t"),
        ("answer: select name from t", "select name from t"),
        ("```sql\nSELECT a FROM t", "SELECT a FROM t"),  # the reply stopped before closing the fence
        ("```sql\nSELECT 1; DROP TABLE t\n```", "SELECT 1"),
        ("I am not sure.", None),
        ("```sql\n\n```", None),
        ("SUBMIT", None),
    ],
)
def test_extract_sql(reply: str, sql: str | None) -> None:
    assert extract_sql(reply) == sql


def test_submit_marker_is_a_separate_word_outside_code() -> None:
    assert is_submission("SUBMIT")
    assert is_submission("The result looks right.\nSUBMIT")
    assert is_submission("```sql\nSELECT 1\n```\nSUBMIT.")
    assert not is_submission("```sql\nSELECT 'SUBMIT'\n```")
    assert not is_submission("I will SUBMITTED later")
    assert not is_submission("submit")  # the marker is case-sensitive
    assert is_submission("done, FINAL", marker="FINAL")


# Episodes -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_examples():
    return load_spider(split="dev")


def fence(sql: str) -> str:
    return f"```sql\n{sql}\n```"


def test_reset_is_seeded_and_prompt_has_schema_and_question(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples)
    a, info_a = env.reset(seed=7)
    b, info_b = env.reset(seed=7)
    assert a == b and info_a == info_b
    assert [m["role"] for m in a] == ["system", "user"]
    assert "SUBMIT" in a[0]["content"] and "3 replies" in a[0]["content"]
    ex = dev_examples[info_a["example_index"]]
    assert "CREATE TABLE" in a[1]["content"] and a[1]["content"].endswith(f"Question: {ex.question}")
    assert ex.query not in a[1]["content"]
    seen = {env.reset(seed=s)[1]["example_index"] for s in range(30)}
    assert len(seen) > 10


def test_by_seed_order_visits_every_question_once(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, task_order="by_seed")
    n = len(dev_examples)
    seen = [env.reset(seed=10_000_019 + k)[1]["example_index"] for k in range(n)]
    assert sorted(seen) == list(range(n))
    assert env.reset(seed=n + 3)[1]["example_index"] == 3
    assert env.reset()[1]["example_index"] == 4


def test_correct_query_submitted_at_once(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples)
    env.reset(options={"index": 0})
    msgs, reward, term, trunc, info = env.step(fence(dev_examples[0].query) + "\nSUBMIT")
    assert (msgs, reward, term, trunc) == ([], 1.0, True, False)
    assert info["success"] and info["end_reason"] == "submitted" and info["gold_query"] == dev_examples[0].query


def test_revise_then_submit_the_last_query(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=4)
    env.reset(options={"index": 0})
    msgs, reward, term, _, info = env.step(fence("SELECT nope FROM band"))
    assert not term and reward == 0.0 and msgs[0]["role"] == "user"
    assert msgs[0]["content"].startswith("Error: no such column: nope") and "3 replies left" in msgs[0]["content"]
    msgs, _, term, _, _ = env.step(fence(dev_examples[0].query))
    assert not term and "The query returned" in msgs[0]["content"]
    _, reward, term, _, info = env.step("Looks right. SUBMIT")
    assert term and reward == 1.0 and info["final_query"] == dev_examples[0].query and info["turn"] == 3


def test_correct_by_turn_scores_the_query_standing_after_each_reply(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=4)
    env.reset(options={"index": 0})
    env.step(fence("SELECT nope FROM band"))  # turn 1: an error
    env.step("Let me think.")  # turn 2: no query, the error still stands
    env.step(fence(dev_examples[0].query))  # turn 3: the fix
    *_, info = env.step("SUBMIT")  # turn 4 submits it
    assert [info[f"correct_turn_{k}"] for k in (1, 2, 3, 4)] == [False, False, True, True]
    env.reset(options={"index": 0})
    *_, info = env.step(fence(dev_examples[0].query) + "\nSUBMIT")  # right at once: right after every turn
    assert [info[f"correct_turn_{k}"] for k in (1, 2, 3, 4)] == [True] * 4
    env.reset(options={"index": 0})
    env.step(fence(dev_examples[0].query))
    *_, info = env.step(fence("SELECT name FROM band WHERE 0") + "\nSUBMIT")  # a right query revised wrong
    assert [info[f"correct_turn_{k}"] for k in (1, 2, 3, 4)] == [True, False, False, False] and not info["success"]
    records = [{"success": False, "difficulty": "easy", "correct_turn_1": False, "correct_turn_2": True},
               {"success": True, "difficulty": "hard", "correct_turn_1": True, "correct_turn_2": True},
               {"success": False, "difficulty": "hard", "correct_turn_1": False, "correct_turn_2": False}]
    report = SpiderSQLEnv.eval_report(records)
    assert report["by turn"] == {"after reply 1": {"count": 3, "accuracy": 1 / 3},
                                 "after reply 2": {"count": 3, "accuracy": 2 / 3}}
    assert report["by difficulty"]["hard"] == {"count": 2, "accuracy": 0.5}


def test_result_preview_is_short_and_counts_rows(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, preview_rows=2)
    env.reset(options={"index": 0})
    msgs, *_ = env.step(fence("SELECT name, genre FROM band"))
    lines = msgs[0]["content"].splitlines()
    assert lines[0] == "The query returned 30 rows; the first 2:" and lines[1] == "name | genre"
    assert len([x for x in lines if " | " in x]) == 3
    msgs, *_ = env.step(fence("SELECT name FROM band WHERE 0"))
    assert msgs[0]["content"].startswith("The query ran and returned no rows.")


def test_turns_running_out_submit_the_last_query(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=2)
    env.reset(options={"index": 0})
    env.step(fence(dev_examples[0].query))
    _, reward, term, trunc, info = env.step("I have no better idea.")
    assert term and not trunc and reward == 1.0 and info["end_reason"] == "max_turns"


def test_single_turn_mode_scores_the_first_reply_without_feedback(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=1)
    msgs, _ = env.reset(options={"index": 0})
    assert "no feedback" in msgs[0]["content"]
    out, reward, term, _, info = env.step(fence("SELECT name FROM band"))
    assert out == [] and term and reward == 0.0 and info["match_reason"] == "mismatch"


def test_shaping_rewards(dev_examples) -> None:
    kw = dict(examples=dev_examples, reward_executes=0.1, reward_error=-0.2, reward_invalid_reply=-0.05)
    env = SpiderSQLEnv(**kw, max_turns=3)
    env.reset(options={"index": 0})
    _, r1, *_ = env.step("hmm")
    assert r1 == pytest.approx(-0.05)
    _, r2, term, _, _ = env.step(fence("SELECT 1") + " SUBMIT")
    assert term and r2 == pytest.approx(0.1)
    env.reset(options={"index": 0})
    _, r, term, _, info = env.step(fence("SELECT nope FROM band") + "\nSUBMIT")
    assert term and r == pytest.approx(-0.2) and info["match_reason"] == "error"
    env.reset(options={"index": 0})
    _, r, term, _, info = env.step("SUBMIT")  # nothing to submit
    assert term and r == pytest.approx(-0.2) and info["match_reason"] == "no_query" and not info["success"]


def test_repeating_a_failed_query_is_penalised(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=4, reward_repeated_error=-0.3)
    env.reset(options={"index": 0})
    _, r1, *_ = env.step(fence("SELECT nope FROM band"))
    _, r2, *_ = env.step(fence("SELECT   nope\nFROM band"))  # the same query, spaced differently
    _, r3, *_ = env.step(fence("SELECT count(*) FROM band"))  # a new query that runs
    _, r4, term, _, info = env.step(fence("SELECT count(*) FROM band") + " SUBMIT")  # repeating one that ran: free
    assert (r1, r2, r3) == (0.0, pytest.approx(-0.3), 0.0)
    assert term and r4 == pytest.approx(1.0 if info["correct"] else 0.0)
    env.reset(options={"index": 0})  # a new episode forgets the failures
    _, r, *_ = env.step(fence("SELECT nope FROM band"))
    assert r == 0.0
    _, r, term, *_ = env.step(fence("SELECT nope FROM band") + " SUBMIT")  # submitting it is repeating it too
    assert term and r == pytest.approx(-0.3)


def test_hostile_query_is_an_error_observation(dev_examples) -> None:
    path = dev_examples[0].db_path
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    env = SpiderSQLEnv(examples=dev_examples, timeout_s=0.2)
    env.reset(options={"index": 0})
    msgs, *_ = env.step(fence("DROP TABLE band"))
    assert msgs[0]["content"].startswith("Error: ")
    msgs, *_ = env.step(fence("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"))
    assert "timed out" in msgs[0]["content"]
    env.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_broken_gold_scores_zero_with_a_warning(dev_examples) -> None:
    import dataclasses

    broken = dataclasses.replace(dev_examples[0], query="SELECT * FROM no_such_table")
    env = SpiderSQLEnv(examples=[broken])
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="cannot be scored"):
        _, reward, term, _, info = env.step(fence("SELECT 1") + " SUBMIT")
    assert term and reward == 0.0 and info["match_reason"] == "gold_error"


def test_step_after_the_end_raises(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, max_turns=1)
    env.reset(options={"index": 0})
    env.step("SUBMIT")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("SUBMIT")


def test_options_and_arguments_are_validated(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples)
    with pytest.raises(IndexError):
        env.reset(options={"index": len(dev_examples)})
    with pytest.raises(ValueError):
        SpiderSQLEnv(examples=dev_examples, max_turns=0)
    with pytest.raises(ValueError):
        SpiderSQLEnv(examples=[])


def test_loading_options_and_schema_variants() -> None:
    env = SpiderSQLEnv(split="dev", db_ids=["football_league"], max_examples=5, sample_rows=2,
                       schema_source="tables_json")
    assert len(env.examples) == 5 and {e.db_id for e in env.examples} == {"football_league"}
    msgs, _ = env.reset(seed=0)
    assert "example rows from club" in msgs[1]["content"] and "FOREIGN KEY" in msgs[1]["content"]


def test_custom_system_prompt(dev_examples) -> None:
    env = SpiderSQLEnv(examples=dev_examples, system_prompt="Up to {max_turns} tries; end with {marker}.",
                       submit_marker="DONE")
    msgs, _ = env.reset(seed=0)
    assert msgs[0]["content"] == "Up to 3 tries; end with DONE."


# Token level ---------------------------------------------------------------------------------------------------


def test_chat_token_env_passes_check_env(dev_examples) -> None:
    from gymnasium.utils.env_checker import check_env

    from agentgym.message_env import ChatTokenEnv
    from agentgym.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    env = ChatTokenEnv(SpiderSQLEnv(examples=dev_examples), tok, max_context_tokens=8192)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(options={"index": 0})
    assert tok.decode(obs).count("CREATE TABLE") == 3
    action = tok.encode(fence(dev_examples[0].query) + "\nSUBMIT", add_special_tokens=False)
    action.append(tok.convert_tokens_to_ids("<|im_end|>"))
    _, reward, term, _, info = env.step(np.asarray(action))
    assert term and reward == 1.0 and info["success"]


def test_registered_id_builds_a_token_env() -> None:
    import agentgym.registration as reg
    from agentgym.tiny import make_tiny_tokenizer

    if "agentgym/SpiderSQL-v0" not in reg.registry:
        reg.register("agentgym/SpiderSQL-v0", "agentgym.envs.spider_sql:SpiderSQLEnv")
    env = reg.make("agentgym/SpiderSQL-v0", split="dev", tokenizer=make_tiny_tokenizer(), max_context_tokens=8192)
    obs, info = env.reset(seed=0)
    assert len(obs) > 100 and info["db_id"] in {"music_festival", "football_league", "bike_sharing"}
