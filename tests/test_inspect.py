"""agentgym inspect: token views of saved episodes, the console and HTML renderings, and the command."""

import json

import pytest

from agentgym.workflow.inspection import episode_view, load_episodes, main, render_html, select_episodes, token_decoder


def _record(tok, iteration=1, episode_id=0, success=True, rebuilt=False):
    """A two-turn episode as the trainer writes it: turn 1's context extends turn 0's context + action."""
    prompt0 = tok.encode("<|im_start|>user\nGuess 1-3<|im_end|>\n<|im_start|>assistant\n")
    act0 = tok.encode("1<|im_end|>")
    obs = tok.encode("\n<|im_start|>user\nHigher.<|im_end|>\n<|im_start|>assistant\n")
    prompt1 = (tok.encode("<|im_start|>user\nfresh<|im_end|>\n") if rebuilt else prompt0 + act0) + obs
    act1 = tok.encode("2<|im_end|>")
    return {
        "iteration": iteration, "episode_id": episode_id, "group_id": 3, "agent_id": 0,
        "return": 1.0 if success else 0.0, "success": success, "terminated": True, "truncated": False,
        "turns": [
            {"prompt_ids": prompt0, "action_ids": act0, "logprobs": [-0.5, -0.1], "reward": 0.0,
             "finish_reason": "stop"},
            {"prompt_ids": prompt1, "action_ids": act1, "logprobs": [-2.0, -0.05],
             "reward": 1.0 if success else 0.0, "finish_reason": "stop"},
        ],
        "info": {"secret": 2},
    }


def _write_run(path, records, model="tiny"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model": model}))
    (path / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_trained_tokens_are_exactly_the_actions_and_rewards_sit_on_each_turns_last_token(tiny_tokenizer):
    rec = _record(tiny_tokenizer)
    view = episode_view(rec, token_decoder(tiny_tokenizer))
    t0, t1 = view.turns
    assert [t.id for t in t0.context] == rec["turns"][0]["prompt_ids"]
    # Turn 1 shows only what the env added after turn 0's action, at its positions in the merged row.
    n0 = len(rec["turns"][0]["prompt_ids"]) + len(rec["turns"][0]["action_ids"])
    assert [t.id for t in t1.context] == rec["turns"][1]["prompt_ids"][n0:]
    assert t1.context[0].position == n0 and not t1.context_rebuilt
    for turn, raw in zip(view.turns, rec["turns"]):
        assert [t.id for t in turn.action] == raw["action_ids"]
        assert all(t.trained for t in turn.action) and not any(t.trained for t in turn.context)
        assert [t.logprob for t in turn.action] == raw["logprobs"]
        assert [t.reward for t in turn.action] == [None] * (len(raw["action_ids"]) - 1) + [raw["reward"]]
        assert turn.action[0].position == len(raw["prompt_ids"])
    assert "".join(t.text for t in t1.action) == "2<|im_end|>"
    assert view.trained_tokens == 4 and view.episode_return == 1.0


def test_a_context_that_does_not_extend_the_previous_one_is_shown_whole(tiny_tokenizer):
    rec = _record(tiny_tokenizer, rebuilt=True)
    t1 = episode_view(rec).turns[1]
    assert t1.context_rebuilt
    assert [t.id for t in t1.context] == rec["turns"][1]["prompt_ids"]
    assert t1.context[0].text == f"<{rec['turns'][1]['prompt_ids'][0]}>"  # no tokenizer: ids


def test_mismatched_logprobs_are_an_error(tiny_tokenizer):
    rec = _record(tiny_tokenizer)
    rec["turns"][0]["logprobs"] = [-0.5]
    with pytest.raises(ValueError, match="2 action ids but 1 logprobs"):
        episode_view(rec)


def test_select_episodes(tiny_tokenizer):
    recs = [_record(tiny_tokenizer, iteration=i, episode_id=10 * i + j, success=j == 0) for i in (1, 2) for j in (0, 1)]
    assert [r["episode_id"] for r in select_episodes(recs)] == [20, 21]
    assert len(select_episodes(recs, "all")) == 4
    assert [r["episode_id"] for r in select_episodes(recs, 1, only="failure")] == [11]
    assert [r["episode_id"] for r in select_episodes(recs, episode=11)] == [11]
    assert len(select_episodes(recs, "all", limit=3)) == 3
    with pytest.raises(ValueError, match="saved iterations: 1, 2"):
        select_episodes(recs, 7)


def test_html_marks_trained_tokens_logprobs_and_rewards(tiny_tokenizer):
    rec = _record(tiny_tokenizer)
    page = render_html([episode_view(rec, token_decoder(tiny_tokenizer))])
    assert page.count('class="act"') == 4  # one span per sampled token
    assert page.count('data-logprob="-2.0000"') == 1
    assert page.count('class="reward') == 2 and "r = +1.000" in page
    assert "&lt;|im_start|&gt;" in page and "<|im_start|>" not in page.split("<body>")[1]  # escaped


def test_command_prints_and_writes_html(tmp_path, tiny_tokenizer, capsys):
    run = _write_run(tmp_path / "run", [_record(tiny_tokenizer, iteration=i, episode_id=i) for i in (1, 2)])
    assert main([str(run), "--iteration", "all"]) == 0
    out = capsys.readouterr().out
    assert "episode 1 · iteration 1" in out and "episode 2 · iteration 2" in out
    assert "Higher." in out and "reward +1.000" in out and "-2.0000" in out
    assert main([str(run), "--html"]) == 0
    page = (run / "inspect.html").read_text()
    assert "episode 2" in page and "episode 1 ·" not in page  # the last iteration by default
    assert main([str(run), "--html", str(tmp_path / "x.html"), "--episode", "1", "--no-decode"]) == 0
    assert "&lt;" in (tmp_path / "x.html").read_text() or "<" in (tmp_path / "x.html").read_text()


def test_command_errors_say_what_to_do(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no episodes.jsonl" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="agentgym eval --out-dir"):
        load_episodes(tmp_path)


def test_inspect_a_trained_run(tmp_path, capsys):
    """A real run of the trainer: the saved episodes show every sampled token as trained, with its logprob."""
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    cfg = TrainConfig(
        model="tiny", env="agentgym/GuessNumber-v0",
        env_kwargs={"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}, max_new_tokens=1,
        groups_per_iteration=2, group_size=4, iterations=2, wandb=False, progress=False, export=False,
        run_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    records = load_episodes(tmp_path / "run")
    assert {r["iteration"] for r in records} == {1, 2}
    views = [episode_view(r) for r in records]
    for view, rec in zip(views, records):
        assert view.trained_tokens == sum(len(t["action_ids"]) for t in rec["turns"])
        assert sum(t.reward for turn in view.turns for t in turn.action if t.reward is not None) == pytest.approx(
            rec["return"])
    assert main([str(tmp_path / "run"), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "iteration 2" in out and "I am thinking of an integer between 1 and 3" in out
