"""A resumed run's logs hold each iteration once: what follows the checkpoint's step is trimmed on resume."""

from __future__ import annotations

import json

from agentgym.training.tracking import WANDB_ID_FILE, RunLogger, read_metrics, trim_jsonl


def _episode_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines() if line.strip()]


def _write_episodes(run_dir, iterations, *, cut_last: bool = False) -> None:
    with (run_dir / "episodes.jsonl").open("a") as f:
        for it in iterations:
            f.write(json.dumps({"iteration": it, "reward": float(it), "text": "ok"}) + "\n")
        if cut_last:
            f.write('{"iteration": 9, "rew')  # the process died in the middle of a line


def test_metrics_after_resume_hold_each_iteration_once(tmp_path):
    # Killed after logging iteration 3, before its checkpoint: the last checkpoint is step 2.
    first = RunLogger(tmp_path, use_wandb=False, console=False)
    for step in (1, 2, 3):
        first.log({"reward_mean": 0.1 * step, "run": 1}, step=step)
    _write_episodes(tmp_path, [1, 1, 2, 2, 3, 3], cut_last=True)

    resumed = RunLogger(tmp_path, use_wandb=False, console=False, resume_step=2)
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    assert [r["iteration"] for r in _episode_lines(tmp_path)] == [1, 1, 2, 2]
    for step in (3, 4, 5):
        resumed.log({"reward_mean": 0.1 * step, "run": 2}, step=step)
    _write_episodes(tmp_path, [3, 3, 4, 4, 5, 5])
    resumed.close()

    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["run"] for r in records] == [1, 1, 2, 2, 2]  # iteration 3 is the resumed run's
    assert [r["iteration"] for r in _episode_lines(tmp_path)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fresh_logger_appends_and_a_trim_keeps_records_without_an_iteration(tmp_path):
    RunLogger(tmp_path, use_wandb=False, console=False).log({"x": 1}, step=1)
    RunLogger(tmp_path, use_wandb=False, console=False).log({"x": 2}, step=2)  # resume_step=None: no trim
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]

    path = tmp_path / "other.jsonl"
    path.write_text('{"iteration": 1}\n{"note": "no iteration"}\n{"iteration": 4}\n')
    before = path.stat().st_mtime_ns
    assert trim_jsonl(path, 4) == 4 and path.stat().st_mtime_ns == before  # nothing to drop: not rewritten
    assert trim_jsonl(path, 0) == 4
    assert path.read_text() == '{"note": "no iteration"}\n'
    assert trim_jsonl(tmp_path / "missing.jsonl", 3) is None


def test_resume_continues_the_wandb_run_without_sending_a_step_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    first = RunLogger(tmp_path, use_wandb=True, console=False)
    run_id = first.wandb_run.id
    assert (tmp_path / WANDB_ID_FILE).read_text() == run_id
    for step in (1, 2, 3):
        first.log({"reward_mean": 0.1 * step}, step=step)
    # No close(): the process was killed. The next wandb.init finishes the old run in this process.

    resumed = RunLogger(tmp_path, use_wandb=True, console=False, resume_step=2)
    try:
        assert resumed.wandb_run.id == run_id  # the same wandb run goes on
        sent = []
        original = resumed.wandb_run.log
        def log(data, step=None):
            sent.append(step)
            original(data, step=step)

        monkeypatch.setattr(resumed.wandb_run, "log", log)
        for step in (3, 4, 5):
            resumed.log({"reward_mean": 0.1 * step}, step=step)
        assert sent == [4, 5]  # wandb already has step 3 from the killed process
    finally:
        resumed.close()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]

    # A run resumed from a checkpoint after which nothing was logged sends every new step.
    again = RunLogger(tmp_path, use_wandb=True, console=False, resume_step=5)
    try:
        assert again.wandb_run.id == run_id and again.wandb_sent_step == 5
    finally:
        again.close()
