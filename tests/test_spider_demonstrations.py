"""Spider gold demonstrations: every record is a winning episode of the env, and SFT reads it."""

import json

import pytest

from agentgym.envs.spider_sql import SpiderSQLEnv
from agentgym.envs.spider_sql.env import extract_sql
from agentgym.envs.spider_sql.demonstrations import demonstrations, main
from agentgym.training.sft import load_trajectories


@pytest.mark.parametrize("max_turns", [1, 3])
def test_every_demonstration_wins_its_episode(max_turns):
    env = SpiderSQLEnv(split="dev", max_turns=max_turns)
    try:
        records = list(demonstrations(env))
        assert len(records) == len(env.examples)
        for index, record in enumerate(records):
            messages, info = env.reset(options={"index": index})
            assert record["messages"][:-1] == messages and record["difficulty"] == info["difficulty"]
            reply = record["messages"][-1]
            assert reply["role"] == "assistant"
            _, reward, terminated, _, info = env.step(reply["content"])
            # One reply ends the episode (it submits) and scores as correct.
            assert terminated and info["success"] and reward == 1.0, (index, reply, info["match_reason"])
            assert info["end_reason"] == ("submitted" if max_turns > 1 else "max_turns")
    finally:
        env.close()


def test_cli_writes_records_that_sft_reads(tmp_path, tiny_tokenizer, capsys):
    out = tmp_path / "gold.jsonl"
    main(["--split", "train", "--max-turns", "1", "--max-examples", "5", "--out", str(out)])
    assert "wrote 5 demonstrations" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and all(r["reward"] == 1.0 for r in lines)
    episodes = load_trajectories(out, tiny_tokenizer)
    assert len(episodes) == 5
    for record, ep in zip(lines, episodes):
        (turn,) = ep.turns
        trained = tiny_tokenizer.decode(turn.action_ids)
        assert record["messages"][-1]["content"] in trained  # the reply is the trained span
        assert "Question:" in tiny_tokenizer.decode(turn.prompt_ids) and "Question:" not in trained


def _replay(env, record):
    """Step the env with the record's assistant replies; the conversation it gives and the last info."""
    messages, info = env.reset(options={"index": record["group_id"]})
    messages = list(messages)
    for m in record["messages"][len(messages):]:
        if m["role"] != "assistant":
            continue
        messages.append(m)
        observation, _, terminated, _, info = env.step(m["content"])
        messages.extend(observation)
        if terminated:
            break
    return messages, info


def test_review_and_correction_demonstrations_replay_as_winning_episodes():
    env = SpiderSQLEnv(split="train", max_turns=3, max_examples=12)
    try:
        records = list(demonstrations(env, style="review", corrections=True, seed=3))
        reviews = [r for r in records if not any(m.get("train") is False for m in r["messages"])]
        fixes = [r for r in records if any(m.get("train") is False for m in r["messages"])]
        assert len(reviews) == 12 and len(fixes) >= 10  # nearly every gold query has a misspelling that fails
        for record in records:
            messages, info = _replay(env, record)
            assert messages == record["messages"]  # the env's own feedback, verbatim
            assert info["success"] and info["end_reason"] == "submitted"
            assert record["messages"][-1] == {"role": "assistant", "content": "SUBMIT"}
        for record in fixes:
            broken, error, fixed = record["messages"][2:5]
            assert broken["train"] is False and error["content"].startswith("Error: no such ")
            assert extract_sql(fixed["content"]) == env.examples[record["group_id"]].query.strip().rstrip(";")
            assert "train" not in fixed
            # turn 1 of the correction record is the failure, so it stands wrong after reply 1
            assert not _replay(env, record)[1]["correct_turn_1"] and _replay(env, record)[1]["correct_turn_2"]
    finally:
        env.close()


def test_the_failed_attempt_is_context_not_a_target(tmp_path, tiny_tokenizer):
    env = SpiderSQLEnv(split="train", max_turns=3, max_examples=4)
    try:
        fix = next(r for r in demonstrations(env, style="review", corrections=True)
                   if any(m.get("train") is False for m in r["messages"]))
    finally:
        env.close()
    out = tmp_path / "fix.jsonl"
    out.write_text(json.dumps(fix) + "\n")
    (ep,) = load_trajectories(out, tiny_tokenizer)
    assert len(ep.turns) == 2 and ep.is_mergeable()  # the repair and SUBMIT; the failing reply is not a turn
    broken = extract_sql(fix["messages"][2]["content"])
    repair, submit = (tiny_tokenizer.decode(t.action_ids) for t in ep.turns)
    assert broken in tiny_tokenizer.decode(ep.turns[0].prompt_ids) and broken not in repair
    assert fix["messages"][4]["content"] in repair and "SUBMIT" in submit


@pytest.mark.parametrize("kwargs, max_turns, message", [
    ({"style": "reveiw"}, 3, "style must be one of submit, review"),
    ({"style": "review"}, 1, "needs an env with max_turns >= 2"),
    ({"style": "review", "corrections": True}, 2, "corrections need style='review' and an env with max_turns >= 3"),
    ({"corrections": True}, 3, "corrections need style='review'"),
])
def test_bad_demonstration_options_are_named(kwargs, max_turns, message):
    env = SpiderSQLEnv(split="train", max_turns=max_turns, max_examples=2)
    try:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            list(demonstrations(env, **kwargs))
    finally:
        env.close()
