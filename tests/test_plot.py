"""agentgym plot: grouping runs by config minus seed, mean and spread over seeds, the PNG and the command."""

import json

import numpy as np
import pytest

from agentgym.training.plot import (
    aggregate, area_under_curve, final_value, find_runs, group_runs, load_run, main, plot_runs, smooth,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(path, config, success, extra=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    lines = []
    for i, s in enumerate(success, 1):
        rec = {"iteration": i, "success_rate": s, "reward_mean": 2 * s, "iteration_s": 0.5, "episodes": 8.0}
        rec.update(extra or {})
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    base = {"env": "agentgym/GuessNumber-v0", "env_kwargs": {"high": 3}, "algo": "grpo", "lr": 0.001,
            "run_dir": "x", "wandb": False}
    _write_run(tmp_path / "a0", {**base, "seed": 0, "run_dir": "a0"}, [0.0, 0.5, 1.0])
    _write_run(tmp_path / "a1", {**base, "seed": 1, "run_dir": "a1"}, [0.2, 0.5, 0.8])
    _write_run(tmp_path / "b0", {**base, "seed": 0, "lr": 0.01}, [0.1, 0.1])
    _write_run(tmp_path / "c0", {**base, "seed": 0, "env_kwargs": {"high": 5}}, [0.3, 0.3])
    return tmp_path


def test_runs_are_grouped_by_config_minus_seed_and_labelled_by_what_differs(runs):
    groups = group_runs([load_run(p) for p in find_runs([runs])])
    assert sorted(groups) == ["env_kwargs.high=3, lr=0.001", "env_kwargs.high=3, lr=0.01", "env_kwargs.high=5, lr=0.001"]
    assert sorted(r.name for r in groups["env_kwargs.high=3, lr=0.001"]) == ["a0", "a1"]


def test_aggregate_mean_and_std_over_seeds():
    curves = [(np.array([1, 2, 3.0]), np.array([0.0, 0.5, 1.0])), (np.array([1, 2.0]), np.array([0.2, 0.5]))]
    x, mean, low, high, count = aggregate(curves)
    assert x.tolist() == [1, 2, 3] and count.tolist() == [2, 2, 1]
    assert mean == pytest.approx([0.1, 0.5, 1.0])
    assert (high - mean) == pytest.approx([0.1, 0.0, 0.0])
    _, _, lo, hi, _ = aggregate(curves, band="minmax")
    assert lo[0] == 0.0 and hi[0] == pytest.approx(0.2)


def test_curve_statistics():
    assert smooth(np.array([0.0, 1.0, 2.0, 3.0]), 2).tolist() == [0.0, 0.5, 1.5, 2.5]
    assert final_value([0.1, 0.2, 0.6], 2) == pytest.approx(0.4)
    assert area_under_curve([0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert np.isnan(final_value([]))


def test_series_on_cumulative_axes(runs):
    run = load_run(runs / "a0")
    assert run.series("success_rate", "wall_time")[0].tolist() == [0.5, 1.0, 1.5]
    assert run.series("success_rate", "episodes")[0].tolist() == [8.0, 16.0, 24.0]


def test_plot_writes_a_png(runs, tmp_path):
    out = plot_runs([load_run(p) for p in find_runs([runs])], tmp_path / "out" / "c.png", ["success_rate", "reward_mean"])
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_command(runs, capsys, tmp_path):
    assert main([str(runs / "a0"), str(runs / "a1"), str(runs / "b0"), "--smooth", "2", "--x", "wall_time",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert "3 runs in 2 curves" in capsys.readouterr().out
    assert main([str(runs / "a0")]) == 0  # one run: the PNG goes into the run dir
    assert (runs / "a0" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    out = tmp_path / "all.png"
    assert main([str(runs), "--out", str(out), "--metrics", "success_rate", "--band", "minmax"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert "4 runs in 3 curves" in capsys.readouterr().out


def test_command_errors(runs, tmp_path, capsys):
    assert main([str(runs), "--metrics", "nope", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "none of the metrics ['nope']" in err and "success_rate" in err
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
