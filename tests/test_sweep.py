"""Sweeps: the W&B sweep file, local grid and random search, the results table, and wandb.config in train."""

import json
from pathlib import Path

import pytest
import yaml

from agentgym.workflow.config import parse_cli
from agentgym.workflow.sweep import (
    apply_wandb_config, format_value, load_sweep, main, point_args, run_sweep, sweep_points, wandb_sweep_values,
)
from agentgym.training.train_config import CLI_ALIASES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "benchmarks" / "sweep_grpo.yaml"
TINY = ["--model", "tiny", "--env", "agentgym/GuessNumber-v0", "--env.system_prompt", "null", "--env.high", "3", "--env.max_turns", "2",
        "--max_new_tokens", "1", "--groups_per_iteration", "2", "--group_size", "4", "--iterations", "2",
        "--wandb", "false", "--progress", "false", "--export", "false"]


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_benchmark_sweep_file_is_a_wandb_sweep_running_agentgym_train(tmp_path):
    raw = yaml.safe_load(SWEEP_FILE.read_text())
    assert raw["command"][-1] == "${args}" and "train" in raw["command"] and "agentgym" in raw["command"]
    spec = load_sweep(SWEEP_FILE)
    assert spec.method == "random" and spec.metric == "success_rate" and spec.goal == "maximize"
    assert spec.base_args == ["--export=false"]
    points = sweep_points(spec, count=5, seed=1)
    assert points == sweep_points(spec, count=5, seed=1) != sweep_points(spec, count=5, seed=2)
    for point in points:
        assert 1e-6 <= point["lr"] <= 3e-5 and point["algo"] in ("grpo", "dr_grpo", "rloo")
        cfg = parse_cli(TrainConfig, [*spec.base_args, *point_args(point)], CLI_ALIASES)
        assert cfg.lr == pytest.approx(point["lr"]) and cfg.env_kwargs == {"high": 10, "max_turns": 4}
        assert isinstance(cfg.algo_kwargs["kl_coef"], float) and cfg.export is False
        cfg.algo_config()


def test_grid_points_and_count(tmp_path):
    spec = load_sweep(_write(tmp_path / "s.yaml", {
        "method": "grid", "parameters": {"lr": {"values": [0.1, 0.2]}, "seed": {"values": [0, 1, 2]},
                                         "algo": {"value": "rloo"}},
        "command": ["agentgym", "train", "${args}"]}))
    points = sweep_points(spec)
    assert len(points) == 6 and points[0] == {"lr": 0.1, "seed": 0, "algo": "rloo"}
    assert len(sweep_points(spec, count=4)) == 4


def test_nested_parameters_become_dotted_keys(tmp_path):
    spec = load_sweep(_write(tmp_path / "s.yaml", {
        "method": "grid", "parameters": {"env": {"parameters": {"high": {"values": [3, 5]}}}}}))
    assert sweep_points(spec) == [{"env.high": 3}, {"env.high": 5}]


def test_values_round_trip_through_the_command_line_with_their_types():
    assert format_value(1e-06) == "1.0e-06" and yaml.safe_load(format_value(1e-06)) == 1e-06
    assert format_value(True) == "true" and format_value(None) == "null"
    assert yaml.safe_load(format_value({"a": [1, 2]})) == {"a": [1, 2]}
    cfg = parse_cli(TrainConfig, point_args({"algo.kl_coef": 1e-3, "lr": 3e-6, "env.high": 7}), CLI_ALIASES)
    assert cfg.algo_kwargs == {"kl_coef": 1e-3} and cfg.lr == 3e-6 and cfg.env_kwargs == {"high": 7}


@pytest.mark.parametrize("data, message", [
    ({"method": "grid", "paramters": {}}, "Did you mean 'parameters'"),
    ({"method": "bayes", "parameters": {"lr": {"values": [1]}}}, "needs a W&B server"),
    ({"method": "grid", "parameters": {"lr": {"min": 0.1, "max": 0.2}}}, "a grid needs value or values"),
    ({"method": "random", "parameters": {"lr": {"values": [1]}}}, "--count"),
    ({"method": "random", "parameters": {"lr": {"distribution": "log_uniform_value", "min": 1, "max": 2}}},
     "Did you mean 'log_uniform_values'"),
    ({"method": "grid", "parameters": {"lr": 0.1}}, "expected a mapping"),
    ({"method": "grid", "command": ["python", "x.py"]}, "does not run `agentgym train`"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        sweep_points(load_sweep(_write(tmp_path / "s.yaml", data)))


def test_random_search_draws_from_distributions(tmp_path):
    spec = load_sweep(_write(tmp_path / "s.yaml", {"method": "random", "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "group_size": {"min": 2, "max": 4},
        "top_p": {"distribution": "q_uniform", "min": 0.5, "max": 1.0, "q": 0.25}}}))
    points = sweep_points(spec, count=50)
    assert all(1e-5 <= p["lr"] <= 1e-3 for p in points)
    assert {p["group_size"] for p in points} == {2, 3, 4}
    assert {p["top_p"] for p in points} <= {0.5, 0.75, 1.0}


def test_apply_wandb_config_only_acts_under_a_wandb_agent(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    cfg = TrainConfig(lr=1.0)
    assert wandb_sweep_values() is None and apply_wandb_config(cfg, CLI_ALIASES) is cfg
    # What a wandb agent does before it starts the command: ids in the environment, the values in a file.
    params = tmp_path / "wandb" / "sweep-abc" / "config-run1.yaml"
    params.parent.mkdir(parents=True)
    params.write_text("wandb_version: 1\n\n" + yaml.safe_dump(
        {"lr": {"value": 3.0e-6}, "env.high": {"value": 7}, "algo.kl_coef": {"value": 0.0}, "algo": {"value": "rloo"}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    monkeypatch.setenv("WANDB_RUN_ID", "run1")
    monkeypatch.setenv("WANDB_PROJECT", "myproj")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    # The command line carries the same values as strings; the typed wandb.config values win.
    cfg = parse_cli(TrainConfig, ["--lr=3e-06", "--env.high=7", "--algo.kl_coef=0.0", "--wandb=false"], CLI_ALIASES)
    cfg = apply_wandb_config(cfg, CLI_ALIASES)
    assert cfg.lr == 3e-6 and cfg.algo == "rloo" and cfg.env_kwargs == {"high": 7}
    assert cfg.algo_kwargs == {"kl_coef": 0.0} and isinstance(cfg.algo_kwargs["kl_coef"], float)
    assert cfg.wandb is True and cfg.wandb_project == "myproj"
    assert cfg.run_dir == str(Path("runs") / "sweep-abc" / "run1")


def test_train_rejects_a_mistyped_sweep_key_before_loading_a_model(tmp_path, monkeypatch, capsys):
    from agentgym.workflow.cli import main as cli_main

    params = tmp_path / "config.yaml"
    params.write_text(yaml.safe_dump({"wandb_version": 1, "lrr": {"value": 0.1}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    assert cli_main(["train"]) == 2
    assert "unknown config key 'lrr'" in capsys.readouterr().err


def test_dry_run_and_bad_options(tmp_path, capsys):
    assert main([str(SWEEP_FILE), "--count", "2", "--dry-run", "--", "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("agentgym train --export=false") == 2 and out.rstrip().endswith("--iterations 1")
    assert main([str(SWEEP_FILE), "--count", "1", "--dry-run", "--", "--iteratons", "1"]) == 2
    assert "Did you mean --iterations" in capsys.readouterr().err


def test_local_sweep_writes_a_results_table(tmp_path):
    spec = load_sweep(_write(tmp_path / "s.yaml", {
        "method": "grid", "metric": {"name": "success_rate", "goal": "maximize"},
        "parameters": {"seed": {"values": [0, 1]}, "lr": {"values": [0.003]}},
        "command": ["agentgym", "train", "--env.low", "1", "${args}"]}))
    results = run_sweep(spec, tmp_path / "out", extra_args=TINY, in_process=True, echo=False)
    assert [r.status for r in results] == ["ok", "ok"]
    assert all(r.iterations == 2 and 0.0 <= r.final <= 1.0 for r in results)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| rank | run | lr | seed | final success_rate |" in table and "run-001" in table
    assert "| lr | seeds | final success_rate | auc |" in table  # the seeds' mean ± std per configuration
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data["runs"]) == 2 and data["runs"][0]["params"]["lr"] == 0.003
    assert (tmp_path / "out" / "curves.png").is_file()
    config = json.loads((tmp_path / "out" / "run-001" / "config.json").read_text())
    assert config["seed"] == 1 and config["env_kwargs"]["low"] == 1 and config["model"] == "tiny"


def test_local_sweep_command_runs_train_in_subprocesses(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", {"method": "grid", "parameters": {"lr": {"values": [0.003]}},
                                         "command": ["agentgym", "train", "${args}"]})
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--", *TINY]) == 0
    out = capsys.readouterr().out
    assert "final success_rate" in out and (tmp_path / "out" / "run-000" / "metrics.jsonl").is_file()
    assert "iter 2" in (tmp_path / "out" / "run-000" / "train.log").read_text()
