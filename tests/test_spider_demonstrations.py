"""Spider gold demonstrations: every record is a winning episode of the env, and SFT reads it."""

import json

import pytest

from agentgym.envs.spider_sql import SpiderSQLEnv
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
