"""What a run tells its user: held-out greedy success before and after, the curve PNG, the end summary, and the
console output in a terminal (a live bar) and in a pipe (plain lines with the time left)."""

import json
import os
import pty
import re
import subprocess
import sys

import pytest

from agentgym.workflow.train_command import end_summary
from agentgym.rollout.evaluation import evaluate_policy
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ENV = {"low": 1, "high": 2, "max_turns": 2, "system_prompt": None}


def _trainer(tmp_path, name, **overrides):
    model, tok = make_tiny_policy(seed=0)
    kwargs = dict(env="agentgym/GuessNumber-v0", env_kwargs=ENV, algo="grpo", iterations=3, groups_per_iteration=4,
                  group_size=4, max_new_tokens=3, lr=3e-3, micro_batch_size=16, run_dir=str(tmp_path / name),
                  wandb=False, progress=False, export=False, save_episodes=0, eval_episodes=16)
    kwargs.update(overrides)
    return Trainer(TrainConfig(**kwargs), model=model, tokenizer=tok)


def test_held_out_evaluation_before_and_after_is_agentgym_eval_of_the_same_weights(tmp_path):
    trainer = _trainer(tmp_path, "run", export=True)
    _, tok = make_tiny_policy(seed=0)
    model0, _ = make_tiny_policy(seed=0)
    expected_before, _ = evaluate_policy(model0, tok, "agentgym/GuessNumber-v0", ENV, episodes=16, temperature=0.0,
                                         max_new_tokens=3)
    history = trainer.train()
    report = trainer.report
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["before"]["success_rate"] == report["eval_before"]["success_rate"] == expected_before.success_rate
    assert saved["before"]["episodes"] == saved["after"]["episodes"] == 16
    # "after" is the exported model evaluated the way `agentgym eval` does (its own engine, greedy, eval seeds).
    from agentgym.models import load_model

    exported, exported_tok = load_model(report["model"])
    expected_after, _ = evaluate_policy(exported, exported_tok, "agentgym/GuessNumber-v0", ENV, episodes=16,
                                        temperature=0.0, max_new_tokens=3)
    assert report["eval_after"]["success_rate"] == expected_after.success_rate
    assert report["eval_after"]["reward_mean"] == pytest.approx(expected_after.reward_mean)
    assert (tmp_path / "run" / "curve.png").stat().st_size > 1000 and report["curve"].endswith("curve.png")
    assert len(history) == 3 and report["wall_s"] > 0


def test_evaluation_does_not_change_what_training_does(tmp_path):
    with_eval = _trainer(tmp_path, "a", eval_episodes=16, iterations=5).train()
    without = _trainer(tmp_path, "b", eval_episodes=0, iterations=5).train()
    keys = ("reward_mean", "success_rate", "actor/pg_loss", "actor/entropy", "policy_tokens")
    assert [[m.get(k) for k in keys] for m in with_eval] == [[m.get(k) for k in keys] for m in without]
    assert sum(m.get("trained_tokens", 0) > 0 for m in without) >= 2  # the weights moved between evaluations
    assert not (tmp_path / "b" / "eval.json").exists()


def test_end_summary_says_before_after_where_and_how_to_use_the_model():
    report = {"eval_before": {"success_rate": 0.125, "episodes": 64}, "eval_after": {"success_rate": 0.75,
              "episodes": 64}, "wall_s": 312.4, "run_dir": "runs/x", "curve": "runs/x/curve.png",
              "model": "runs/x/model"}
    text = end_summary(report, [{"success_rate": 0.7}] * 12)
    assert text.splitlines()[0] == "done in 5:12: 12 iterations, final training success 0.700"
    assert "held-out greedy success: 0.125 -> 0.750 (64 tasks, +0.625)" in text
    assert "runs/x/curve.png" in text
    assert "agentgym eval --model runs/x --episodes 128 --temperature 0" in text
    assert "agentgym serve --model runs/x/model" in text


def _cli_args(tmp_path):
    model, tok = make_tiny_policy(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return [sys.executable, "-m", "agentgym.workflow.cli", "train", "--model", str(tmp_path / "tiny"),
            "--env", "agentgym/GuessNumber-v0", "--env.low", "1", "--env.high", "2", "--env.max_turns", "2",
            "--iterations", "2", "--groups_per_iteration", "2", "--group_size", "2", "--max_new_tokens", "3",
            "--eval_episodes", "4", "--wandb", "false", "--export", "false", "--run_dir", str(tmp_path / "run")]


ANSI = re.compile(r"\x1b\[")


def test_in_a_pipe_the_run_prints_plain_lines_with_the_time_left(tmp_path):
    out = subprocess.run(_cli_args(tmp_path), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert not ANSI.search(text), text
    lines = [ln for ln in text.splitlines() if ln.startswith("iter ")]
    assert len(lines) == 2 and all(re.search(r"eta \d+:\d\d$", ln) for ln in lines), text
    assert re.search(r"held-out greedy success before training: \d\.\d{3}", text)
    assert re.search(r"held-out greedy success: \d\.\d{3} -> \d\.\d{3} \(4 tasks", out.stdout)


def test_in_a_terminal_the_run_draws_a_live_bar_with_reward_success_and_eta(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_cli_args(tmp_path), stdin=follower, stdout=follower, stderr=follower,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm", "COLUMNS": "160"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert ANSI.search(text)  # a terminal gets the live display
    plain = ANSI.sub("", text)
    assert re.search(r"train .*2/2 reward \d\.\d{3} success \d\.\d{3}", plain), plain[-2000:]
    assert "ETA" in plain and "eta " not in plain  # the bar carries the time left; the lines need not


@pytest.mark.slow
def test_the_main_job_runs_from_its_defaults(tmp_path):
    """`agentgym train` with the embedded model and every default but the length: it evaluates, trains, draws the
    curve, exports the model and prints the end summary (the learning itself is measured in the README)."""
    out = subprocess.run([sys.executable, "-m", "agentgym.workflow.cli", "train", "--iterations", "2", "--eval_episodes", "8",
                          "--wandb", "false", "--run_dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["env"] == "agentgym/Addition-v0" and config["model"] == "SmolLM2-135M-Instruct"
    evals = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evals["before"]["episodes"] == evals["after"]["episodes"] == 8
    assert (tmp_path / "run" / "curve.png").is_file() and (tmp_path / "run" / "model" / "config.json").is_file()
    assert "held-out greedy success: " in out.stdout and f"serve:     agentgym serve --model {tmp_path}" in out.stdout
    assert "Loading weights" not in out.stderr and "Writing model shards" not in out.stderr
