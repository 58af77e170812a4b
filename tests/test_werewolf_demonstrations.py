"""Werewolf teacher demonstrations: each record replays as the same game, and SFT reads it."""

import json

from agentgym.envs.werewolf.demonstrations import main, teacher_games
from agentgym.envs.werewolf.env import WerewolfMessageEnv
from agentgym.training.sft import load_trajectories

SMALL = dict(discussion_rounds=0, wolf_talk=False, roles={"werewolf": 1, "seer": 1, "doctor": 1, "villager": 2})


def test_teacher_games_replay_exactly_with_valid_actions():
    records = list(teacher_games(WerewolfMessageEnv(learner="werewolf", **SMALL), 6, seed=3))
    assert len(records) == 6 and all(r["role"] == "werewolf" for r in records)
    assert {r["success"] for r in records} == {True, False}  # the heuristic teacher wins some, loses some
    replay = WerewolfMessageEnv(learner="werewolf", **SMALL)
    for i, record in enumerate(records):
        messages, _ = replay.reset(seed=3 + i)
        convo = record["messages"]
        assert convo[: len(messages)] == messages
        pos, total = len(messages), 0.0
        while pos < len(convo):
            assert convo[pos]["role"] == "assistant"
            new, r, term, trunc, info = replay.step(convo[pos]["content"])
            assert info["valid"], info["error"]  # a teacher reply is always a well-formed, legal action
            total += r
            assert convo[pos + 1 : pos + 1 + len(new)] == new
            pos += 1 + len(new)
        assert term and total == record["reward"] and info["success"] == record["success"]


def test_cli_writes_records_that_sft_reads(tmp_path, tiny_tokenizer, capsys):
    out = tmp_path / "demos.jsonl"
    main(["--games", "4", "--learner", "seer", "--out", str(out), "--config", "{discussion_rounds: 0}"])
    assert "wrote 4 games" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(r["role"] == "seer" for r in records)
    episodes = load_trajectories(out, tiny_tokenizer)
    for record, ep in zip(records, episodes):
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert len(ep.turns) == len(replies) and ep.info["success"] == record["success"]
        for turn, reply in zip(ep.turns, replies):
            assert tiny_tokenizer.decode(turn.action_ids, skip_special_tokens=True).strip() == reply
