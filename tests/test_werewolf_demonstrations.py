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


def test_random_moves_teacher_speaks_the_moves_the_village_parses():
    """``--teacher random-moves``: every speech is an accusation or a seer claim (either verdict) about another
    living player, with random content (both verdicts occur); the plain random teacher never names a role."""
    import re

    from agentgym.envs.werewolf.agents import _CLAIM_RE, _SUSPECT_RE
    from agentgym.envs.werewolf.demonstrations import TEACHERS

    env = WerewolfMessageEnv(learner="seer", max_days=4, max_attempts=1)
    speeches, verdicts = [], set()
    for record in teacher_games(env, 30, TEACHERS["random-moves"], seed=0):
        convo = record["messages"]
        for i, m in enumerate(convo):
            if m["role"] == "assistant" and "discussion" in convo[i - 1]["content"].split("\n")[-1]:
                speeches.append(m["content"])
                claim = _CLAIM_RE.fullmatch(m["content"].rstrip("."))
                if claim:
                    verdicts.add(claim.group(2))
    assert speeches and all(_CLAIM_RE.match(s) or _SUSPECT_RE.fullmatch(s.rstrip(".")) for s in speeches)
    assert verdicts == {"a werewolf", "not a werewolf"}
    assert any(re.match(r"I suspect player\d+\.$", s) for s in speeches)
    heard = [m["content"] for r in teacher_games(env, 5, TEACHERS["random"], seed=0) for m in r["messages"]
             if m["role"] == "assistant"]
    assert heard and not any("seer" in s for s in heard)
