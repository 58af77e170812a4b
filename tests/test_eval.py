"""agentgym eval: loading a policy from a run, a checkpoint or a model directory, and its success rate."""

import json
import re

import pytest
import torch

from agentgym.rollout.evaluation import evaluate_policy, wilson_interval
from agentgym.workflow.evaluate import load_policy, main
from agentgym.tiny import make_tiny_policy

ENV = "agentgym/GuessNumber-v0"
ENV_KWARGS = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}


def _train(tmp_path, **overrides):
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    # A penalty for replies without a number makes rewards differ within a group, so the weights move.
    cfg = TrainConfig(model="tiny", env=ENV, env_kwargs={**ENV_KWARGS, "invalid_penalty": 1.0}, max_new_tokens=1, groups_per_iteration=2,
                      group_size=4, iterations=2, lr=3e-3, wandb=False, progress=False, export=False,
                      run_dir=str(tmp_path / "run"), **overrides)
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `agentgym eval` writes runs/eval/... under the working directory by default


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_load_policy_from_a_checkpoint_restores_the_trained_weights(tmp_path):
    trainer = _train(tmp_path)
    with torch.no_grad():  # weights surely unlike the initial ones, whatever the two iterations did
        for p in trainer.model.parameters():
            p.add_(0.01)
    trainer.save()
    trained = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints"):  # run dir without model/, checkpoints dir
        model, tok, conf = load_policy(str(path))
        assert conf["env"] == ENV and conf["model"] == "tiny"
        assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
        assert tok.eos_token == "<|im_end|>"


def test_load_policy_from_an_exported_model_and_by_name(tmp_path):
    model, tok = make_tiny_policy(seed=3)
    model.save_pretrained(tmp_path / "run" / "model")
    tok.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"env": ENV, "model": "tiny"}))
    for path in (tmp_path / "run", tmp_path / "run" / "model"):
        loaded, _, _ = load_policy(str(path))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in loaded.state_dict().items())
    _, _, conf = load_policy("tiny")
    assert conf == {}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model"):
        load_policy(str(tmp_path / "empty"))


def test_success_rate_of_a_policy_is_reproducible():
    model, tok = make_tiny_policy()
    a, eps = evaluate_policy(model, tok, ENV, ENV_KWARGS, episodes=10, max_new_tokens=1, batch_size=4)
    b, _ = evaluate_policy(model, tok, ENV, ENV_KWARGS, episodes=10, max_new_tokens=1, batch_size=4)
    assert a.episodes == len(eps) == 10 and 0.0 <= a.success_rate <= 1.0
    assert a.success_rate == b.success_rate and a.reward_mean == b.reward_mean
    assert a.success_rate == pytest.approx(sum(ep.success for ep in eps) / 10)
    assert a.success_ci95[0] <= a.success_rate <= a.success_ci95[1]
    assert len({ep.group_id for ep in eps}) == 10  # one episode per task


def test_a_greedy_policy_that_always_wins(monkeypatch):
    """A policy whose every first guess is right scores 1.0: the success rate counts env successes."""
    model, tok = make_tiny_policy()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: zero logits everywhere...
    model.config.tie_word_embeddings = False
    target = tok.convert_tokens_to_ids("1")
    model.lm_head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[target] = 100.0  # ...except "1"
    res, _ = evaluate_policy(model, tok, ENV, {"low": 1, "high": 1, "max_turns": 1, "system_prompt": None},
                             episodes=4, temperature=0.0, max_new_tokens=1)
    assert res.success_rate == 1.0 and res.reward_mean == 1.0 and res.turns_mean == 1.0


def test_command_uses_the_runs_settings_and_writes_episodes_for_inspect(tmp_path, capsys):
    from agentgym.workflow.inspection import main as inspect_main

    _train(tmp_path)
    out = tmp_path / "eval"
    assert main(["--model", str(tmp_path / "run"), "--episodes", "6", "--out-dir", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 6 and result["settings"]["env"] == ENV
    assert result["settings"]["env_kwargs"] == {**ENV_KWARGS, "invalid_penalty": 1.0} and result["settings"]["max_new_tokens"] == 1
    assert result["settings"]["tokenizer"] == "tiny"
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 6
    assert inspect_main([str(out), "--limit", "1", "--compact"]) == 0
    assert "between 1 and 3" in capsys.readouterr().out
    # An env argument on the command line wins over the run's.
    assert main(["--model", str(tmp_path / "run"), "--episodes", "2", "--env.high", "5"]) == 0
    text = capsys.readouterr().out
    assert '"high": 5' in text and "success" in text


def test_command_errors(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope" / "x")]) == 2
    assert "could not load the policy" in capsys.readouterr().err
    assert main(["--model", "tiny", "--env", "agentgym/GuesNumber-v0"]) == 2
    assert "Did you mean 'agentgym/GuessNumber-v0'" in capsys.readouterr().err
    assert main(["--model", "tiny", "--env.high"]) == 2


def test_spider_dev_accuracy_by_difficulty_and_per_example_results(tmp_path, capsys):
    """`agentgym eval --env agentgym/SpiderSQL-v0 --split dev` plays every dev question once, prints execution
    accuracy overall and by difficulty, and writes one result per question."""
    from agentgym.envs.spider_sql.data import load_spider
    from agentgym.envs.spider_sql.evaluation import accuracy_report

    model, tok = make_tiny_policy(seed=0, max_position_embeddings=8192)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    dev = load_spider(split="dev", max_examples=7)
    out = tmp_path / "eval"
    argv = ["--model", str(tmp_path / "m"), "--env", "agentgym/SpiderSQL-v0", "--split", "dev",
            "--env.max_examples", "7", "--env.max_turns", "2", "--max-new-tokens", "2", "--max-context-tokens", "8192",
            "--out-dir", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["example_index"] for r in rows) == list(range(7))  # every question once
    assert [r["difficulty"] for r in sorted(rows, key=lambda r: r["example_index"])] == [ex.difficulty for ex in dev]
    assert all(r["gold_query"] == dev[r["example_index"]].query for r in rows)
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 7
    assert report["by_difficulty"] == accuracy_report({"correct": r["success"], "difficulty": r["difficulty"]}
                                                      for r in rows)
    assert report["by_difficulty"]["all"]["count"] == 7
    assert re.search(r"^by difficulty +count +accuracy$", text, re.M) and re.search(r"^all +7 ", text, re.M)
    for level, row in report["by_difficulty"].items():
        assert re.search(rf"^{level} +{int(row['count'])} +{row['accuracy']:.3f}$", text, re.M)
    # Two replies allowed: accuracy of the query standing after each reply, from the per-question results.
    for k in (1, 2):
        acc = sum(r[f"correct_turn_{k}"] for r in rows) / 7
        assert report["reports"]["by turn"][f"after reply {k}"] == {"count": 7, "accuracy": acc}
        assert re.search(rf"^after reply {k} +7 +{acc:.3f}$", text, re.M)
    assert [r["correct_turn_2"] for r in rows] == [r["success"] for r in rows]  # the last reply's query is final


def test_spider_eval_on_any_spider_format_directory(tmp_path, capsys):
    """`--env.data_dir` points the same evaluation at a Spider-format directory the project has never seen: its own
    tables.json, dev.json and database/<db_id>/<db_id>.sqlite, with the difficulty computed from the gold query."""
    import sqlite3

    from agentgym.envs.spider_sql.sql_text import classify_hardness

    root = tmp_path / "unseen"
    (root / "database" / "zoo").mkdir(parents=True)
    with sqlite3.connect(root / "database" / "zoo" / "zoo.sqlite") as db:
        db.execute("CREATE TABLE animal (id INTEGER PRIMARY KEY, name TEXT, legs INTEGER)")
        db.executemany("INSERT INTO animal VALUES (?, ?, ?)", [(1, "emu", 2), (2, "cat", 4), (3, "ant", 6)])
    (root / "tables.json").write_text(json.dumps([{
        "db_id": "zoo", "table_names_original": ["animal"], "table_names": ["animal"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "legs"]],
        "column_names": [[-1, "*"], [0, "id"], [0, "name"], [0, "legs"]],
        "column_types": ["text", "number", "text", "number"], "primary_keys": [1], "foreign_keys": []}]))
    questions = [("How many animals are there?", "SELECT count(*) FROM animal"),
                 ("Name the animals with more than 2 legs, by name.",
                  "SELECT name FROM animal WHERE legs > 2 ORDER BY name")]
    (root / "dev.json").write_text(json.dumps([{"db_id": "zoo", "question": q, "query": s} for q, s in questions]))
    model, tok = make_tiny_policy(seed=0, max_position_embeddings=8192)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "eval"
    argv = ["--model", str(tmp_path / "m"), "--env", "agentgym/SpiderSQL-v0", "--split", "dev", "--env.data_dir",
            str(root), "--env.max_turns", "2", "--max-new-tokens", "2", "--max-context-tokens", "8192",
            "--out-dir", str(out)]
    assert main(argv) == 0
    rows = sorted((json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()),
                  key=lambda r: r["example_index"])
    assert [(r["db_id"], r["gold_query"]) for r in rows] == [("zoo", s) for _, s in questions]
    assert [r["difficulty"] for r in rows] == [classify_hardness(s) for _, s in questions]
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 2 and report["by_difficulty"]["all"]["count"] == 2
    assert set(report["reports"]["by turn"]) == {"after reply 1", "after reply 2"}
    assert "by difficulty" in capsys.readouterr().out
    assert main(argv[:7] + [str(tmp_path / "nowhere")] + argv[8:]) == 2  # a missing directory is named
    assert "nowhere" in capsys.readouterr().err
