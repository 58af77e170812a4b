"""Hyperparameter sweeps: W&B sweep files, run by a wandb agent or locally.

One YAML file serves both ways. It is a W&B sweep configuration whose ``command`` runs ``agentgym train`` with
``${args}`` (see ``benchmarks/sweep_grpo.yaml``):

- ``wandb sweep FILE`` then ``wandb agent SWEEP_ID``: the agent starts ``agentgym train --key=value ...`` per run,
  and :func:`apply_wandb_config` (called by ``agentgym train``) takes the run's values from the agent.
- ``agentgym sweep FILE``: no W&B server needed. Runs the grid (every combination of ``values``) or a random
  search (``--count`` draws from ``values`` and distributions) one ``agentgym train`` after another, then writes a
  results table (``results.md``, ``results.json``) and learning curves (``curves.png``) in the output directory.

Parameter names are ``agentgym train`` keys; dotted keys reach into dicts (``env.high``, ``algo.kl_coef``).
Supported parameter forms: ``value``, ``values`` (with optional ``probabilities``), and ``distribution`` one of
``constant``, ``categorical``, ``uniform``, ``int_uniform``, ``q_uniform``, ``log_uniform_values``,
``log_uniform`` (bounds in natural-log space) and ``q_log_uniform_values``. ``method: bayes`` needs a W&B server.
"""

from __future__ import annotations

import argparse

from agentgym.options import ArgumentParser
import dataclasses
import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from agentgym.workflow.config import apply_wandb_config, parse_cli, wandb_sweep_values  # noqa: F401  (the wandb agent API)

SWEEP_KEYS = (
    "program", "method", "metric", "parameters", "command", "name", "description", "run_cap", "early_terminate",
    "project", "entity", "controller", "job", "image", "scheduler",
)
"""Top-level keys of a W&B sweep configuration."""

DISTRIBUTIONS = (
    "constant", "categorical", "uniform", "int_uniform", "q_uniform", "log_uniform_values", "log_uniform",
    "q_log_uniform_values",
)
ARG_MACROS = ("${args}", "${args_no_equals}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}",
              "${args_json_file}")


@dataclass
class SweepSpec:
    """A sweep as read from its YAML file."""

    method: str
    """grid | random (| bayes, for a W&B server only)"""
    parameters: dict[str, dict[str, Any]]
    """flat ``{train key: W&B parameter spec}``"""
    metric: str = "success_rate"
    """the metric the results table ranks by (its final value)"""
    goal: str = "maximize"
    """maximize | minimize"""
    base_args: list[str] = field(default_factory=list)
    """fixed ``agentgym train`` arguments taken from the file's ``command``"""
    run_cap: int | None = None
    """most runs, from the file"""


def _suggest(key: str, options: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _flatten_parameters(params: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    flat: dict[str, dict[str, Any]] = {}
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise ValueError(
                f"parameter {prefix + name!r}: expected a mapping such as {{values: [...]}} or {{value: X}}, got "
                f"{spec!r}"
            )
        if "parameters" in spec:  # W&B nested parameters: reach into the dict with dotted keys
            flat.update(_flatten_parameters(spec["parameters"], f"{prefix}{name}."))
        else:
            flat[prefix + name] = spec
    return flat


def _base_args(command: Any) -> list[str]:
    """The fixed arguments after ``train`` in a sweep's ``command`` (``${...}`` macros dropped)."""
    if not command:
        return []
    if not isinstance(command, list):
        raise ValueError(f"command must be a list of strings, got {command!r}")
    words = [str(c) for c in command]
    if "train" not in words:
        raise ValueError(f"command {words} does not run `agentgym train`; write e.g. [agentgym, train, '${{args}}']")
    out = []
    for w in words[words.index("train") + 1:]:
        if w in ARG_MACROS:
            continue
        if w.startswith("${") and w.endswith("}"):
            raise ValueError(f"command macro {w} is not supported after `train`; use ${{args}}")
        out.append(w)
    return out


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep YAML file (a W&B sweep configuration)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sweep file at {path}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    for key in data:
        if key not in SWEEP_KEYS:
            raise ValueError(f"{path}: unknown sweep key {key!r}.{_suggest(key, SWEEP_KEYS)}")
    method = str(data.get("method", "grid"))
    if method not in ("grid", "random", "bayes"):
        raise ValueError(f"{path}: method must be grid, random or bayes, got {method!r}")
    metric = data.get("metric") or {}
    if isinstance(metric, str):
        metric = {"name": metric}
    goal = str(metric.get("goal", "maximize"))
    if goal not in ("maximize", "minimize"):
        raise ValueError(f"{path}: metric.goal must be maximize or minimize, got {goal!r}")
    params = _flatten_parameters(data.get("parameters") or {})
    for name, spec in params.items():
        _check_parameter(name, spec)
    run_cap = data.get("run_cap")
    return SweepSpec(
        method=method,
        parameters=params,
        metric=str(metric.get("name", "success_rate")),
        goal=goal,
        base_args=_base_args(data.get("command")),
        run_cap=int(run_cap) if run_cap else None,
    )


def _distribution(spec: dict[str, Any]) -> str:
    if "distribution" in spec:
        return str(spec["distribution"])
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    return "?"


def _check_parameter(name: str, spec: dict[str, Any]) -> None:
    dist = _distribution(spec)
    if dist == "?":
        raise ValueError(f"parameter {name!r}: give value, values, or min and max (got {spec})")
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"parameter {name!r}: distribution {dist!r} is not supported here; use one of "
                         f"{', '.join(DISTRIBUTIONS)}.{_suggest(dist, DISTRIBUTIONS)}")
    if dist == "constant" and "value" not in spec:
        raise ValueError(f"parameter {name!r}: a constant needs value")
    if dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"parameter {name!r}: values must be a non-empty list, got {values!r}")
        probs = spec.get("probabilities")
        if probs is not None and (len(probs) != len(values) or abs(sum(probs) - 1.0) > 1e-6):
            raise ValueError(f"parameter {name!r}: probabilities must match values and sum to 1")
    if dist not in ("constant", "categorical"):
        if "min" not in spec or "max" not in spec:
            raise ValueError(f"parameter {name!r}: distribution {dist} needs min and max")
        if float(spec["min"]) > float(spec["max"]):
            raise ValueError(f"parameter {name!r}: min ({spec['min']}) exceeds max ({spec['max']})")
        if dist in ("log_uniform_values", "q_log_uniform_values") and float(spec["min"]) <= 0:
            raise ValueError(f"parameter {name!r}: {dist} needs min > 0")


def _sample(spec: dict[str, Any], rng: random.Random) -> Any:
    dist = _distribution(spec)
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    lo, hi = float(spec["min"]), float(spec["max"])
    if dist == "int_uniform":
        return rng.randint(int(spec["min"]), int(spec["max"]))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "q_uniform":
        q = float(spec.get("q", 1.0))
        return round(rng.uniform(lo, hi) / q) * q
    if dist == "log_uniform":
        return math.exp(rng.uniform(lo, hi))
    value = math.exp(rng.uniform(math.log(lo), math.log(hi)))  # log_uniform_values, q_log_uniform_values
    if dist == "q_log_uniform_values":
        q = float(spec.get("q", 1.0))
        value = round(value / q) * q
    return value


def sweep_points(spec: SweepSpec, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets to run: the full grid (cut at ``count``), or ``count`` random draws.

    Raises:
        ValueError: a grid over a continuous distribution, a random search without a count, or ``bayes``.
    """
    limit = count or spec.run_cap
    if spec.method == "bayes":
        raise ValueError("method bayes needs a W&B server (wandb sweep / wandb agent); use grid or random locally")
    if spec.method == "grid":
        axes = []
        for name, p in spec.parameters.items():
            dist = _distribution(p)
            if dist == "constant":
                axes.append([(name, p["value"])])
            elif dist == "categorical":
                axes.append([(name, v) for v in p["values"]])
            else:
                raise ValueError(f"parameter {name!r}: a grid needs value or values, not distribution {dist} "
                                 "(use method: random)")
        points = [dict(combo) for combo in itertools.product(*axes)]
        return points[:limit] if limit else points
    if not limit:
        raise ValueError("a random search needs a number of runs: pass --count N (or set run_cap in the file)")
    rng = random.Random(seed)
    return [{name: _sample(p, rng) for name, p in spec.parameters.items()} for _ in range(limit)]


def format_value(value: Any) -> str:
    """A value as ``agentgym train`` reads it back with the same type (YAML syntax for lists and dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        if e and "." not in mantissa:  # YAML reads 1e-06 as a string, 1.0e-06 as a float
            text = f"{mantissa}.0e{exp}"
        return text
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def point_args(point: dict[str, Any]) -> list[str]:
    """``--key=value`` arguments for ``agentgym train``."""
    return [f"--{k}={format_value(v)}" for k, v in point.items()]


# -- running --------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One sweep run and the numbers the results table shows."""

    index: int
    params: dict[str, Any]
    run_dir: str
    status: str
    """ok, or failed (exit code N)"""
    wall_s: float
    final: float = math.nan
    """the sweep metric's last value"""
    best: float = math.nan
    """the sweep metric's best value over iterations"""
    auc: float = math.nan
    """the sweep metric's mean over iterations (normalised area under the curve)"""
    iterations: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    """final reward_mean and success_rate"""


def _summarize(result: RunResult, metric: str, goal: str) -> RunResult:
    from agentgym.training.plot import area_under_curve, load_run

    if not (Path(result.run_dir) / "metrics.jsonl").is_file():
        return result
    run = load_run(result.run_dir)
    if run.config:  # what the run really used (arguments after `--` may override a swept value)
        for name in result.params:
            found, value = _config_value(run.config, name)
            if found:
                result.params[name] = value
    values = [float(r[metric]) for r in run.records if isinstance(r.get(metric), (int, float))]
    result.iterations = len(run.records)
    if values:
        result.final = values[-1]
        result.best = max(values) if goal == "maximize" else min(values)
        result.auc = area_under_curve(values)
    for key in ("reward_mean", "success_rate"):
        vals = [r[key] for r in run.records if isinstance(r.get(key), (int, float))]
        if vals:
            result.extra[key] = float(vals[-1])
    return result


def _config_value(config: dict[str, Any], name: str) -> tuple[bool, Any]:
    """A dotted train key (``lr``, ``env.high``, ``algo.kl_coef``) looked up in a run's saved config."""
    from agentgym.training.train_config import CLI_ALIASES

    head, dot, rest = name.partition(".")
    if not dot:
        return (head in config, config.get(head))
    sub = config.get(CLI_ALIASES.get(head, head))
    if isinstance(sub, dict) and rest in sub:
        return True, sub[rest]
    return False, None


def run_train(args: list[str], log_path: Path, in_process: bool = False) -> int:
    """Run ``agentgym train ARGS`` (a subprocess by default), output to ``log_path``; returns its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if in_process:
        from agentgym.workflow.train_command import main

        return int(main(args) or 0)
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "agentgym.workflow.cli", "train", *args], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.returncode


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    count: int | None = None,
    seed: int = 0,
    extra_args: Sequence[str] = (),
    in_process: bool = False,
    echo: bool = True,
) -> list[RunResult]:
    """Run every point of the sweep with ``agentgym train``, one after another; write the results table.

    Each run's directory is ``out_dir/run-NNN``; the table (``results.md``, ``results.json``) is rewritten after
    every run, so an interrupted sweep keeps what it finished.

    Args:
        extra_args: ``agentgym train`` arguments appended to every run (they win over the file's values).
        in_process: run the trainer in this process instead of a subprocess per run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = sweep_points(spec, count, seed)
    (out / "sweep.json").write_text(json.dumps(
        {"spec": dataclasses.asdict(spec), "points": points, "extra_args": list(extra_args)}, indent=2, default=str
    ))
    results: list[RunResult] = []
    for i, point in enumerate(points):
        run_dir = out / f"run-{i:03d}"
        args = [*spec.base_args, *point_args(point), *extra_args, f"--run_dir={run_dir}"]
        if echo:
            print(f"[{i + 1}/{len(points)}] agentgym train {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        rc = run_train(args, run_dir / "train.log", in_process=in_process)
        status = "ok" if rc == 0 else f"failed (exit {rc}, see {run_dir / 'train.log'})"
        result = _summarize(RunResult(i, point, str(run_dir), status, time.perf_counter() - t0), spec.metric,
                            spec.goal)
        results.append(result)
        write_results(results, spec, out)
        if echo:
            print(f"    {status}: {spec.metric} final {result.final:.4g} best {result.best:.4g} "
                  f"({result.wall_s:.1f} s)", flush=True)
    ok_dirs = [r.run_dir for r in results if (Path(r.run_dir) / "metrics.jsonl").is_file()]
    if ok_dirs:
        from agentgym.training.plot import load_run, plot_runs

        metrics = list(dict.fromkeys([spec.metric, "reward_mean", "success_rate"]))
        try:
            plot_runs([load_run(d) for d in ok_dirs], out / "curves.png", metrics)
        except ValueError as e:
            print(f"agentgym sweep: no curves drawn ({e})", file=sys.stderr)
    return results


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else format_value(v)


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))
    return f"{m:.3f} ± {sd:.3f}"


def results_table(results: Sequence[RunResult], spec: SweepSpec) -> str:
    """The results as markdown: runs ranked by the metric's final value; and, when a sweep varies the seed, the
    configurations ranked by their mean over seeds."""
    names = [n for n in spec.parameters if _distribution(spec.parameters[n]) != "constant"]
    sign = -1.0 if spec.goal == "maximize" else 1.0

    def key(r: RunResult) -> float:
        return math.inf if math.isnan(r.final) else sign * r.final

    m = spec.metric
    lines = [f"Ranked by final {m} ({spec.goal}); auc = mean {m} over iterations.", "",
             "| rank | run | " + " | ".join(names) + f" | final {m} | best {m} | auc | iterations | time (s) | status |",
             "|" + "---|" * (len(names) + 8)]
    for rank, r in enumerate(sorted(results, key=key), 1):
        cells = [_cell(r.params.get(n)) for n in names]
        lines.append(f"| {rank} | {Path(r.run_dir).name} | " + " | ".join(cells) +
                     f" | {_fmt(r.final)} | {_fmt(r.best)} | {_fmt(r.auc)} | {r.iterations} | {r.wall_s:.1f} | "
                     f"{r.status} |")
    if "seed" in names and len(names) > 1:
        others = [n for n in names if n != "seed"]
        groups: dict[str, list[RunResult]] = {}
        for r in results:
            groups.setdefault(json.dumps([r.params.get(n) for n in others], default=str), []).append(r)

        def gkey(item: tuple[str, list[RunResult]]) -> float:
            vals = [r.final for r in item[1] if not math.isnan(r.final)]
            return sign * sum(vals) / len(vals) if vals else math.inf

        lines += ["", f"Over seeds (mean ± std of final {m} and of auc):", "",
                  "| " + " | ".join(others) + f" | seeds | final {m} | auc |", "|" + "---|" * (len(others) + 3)]
        for g, members in sorted(groups.items(), key=gkey):
            cells = [_cell(v) for v in json.loads(g)]
            lines.append("| " + " | ".join(cells) + f" | {len(members)} | {_mean_std([r.final for r in members])} | "
                         f"{_mean_std([r.auc for r in members])} |")
    return "\n".join(lines) + "\n"


def write_results(results: Sequence[RunResult], spec: SweepSpec, out_dir: str | Path) -> None:
    """Write ``results.md`` and ``results.json`` in ``out_dir``."""
    out = Path(out_dir)
    (out / "results.md").write_text(results_table(results, spec))
    rows = [{**dataclasses.asdict(r), **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                         for k, v in dataclasses.asdict(r).items() if isinstance(v, float)}}
            for r in results]
    (out / "results.json").write_text(json.dumps({"metric": spec.metric, "goal": spec.goal, "runs": rows}, indent=2,
                                                 default=str))


# -- command --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="agentgym sweep",
        description="Run a W&B sweep file locally (no W&B server): grid or random search over `agentgym train` "
        "options, one run after another, then a results table (results.md, results.json) and curves.png. "
        "Arguments after `--` go to every `agentgym train` run.",
        epilog="example: agentgym sweep benchmarks/sweep_grpo.yaml --count 4 -- --iterations 5",
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="a W&B sweep file whose command runs agentgym train")
    p.add_argument("--count", type=int, default=None,
                   help="runs to do: random draws, or the first N grid points (default: the whole grid, or the "
                   "file's run_cap)")
    p.add_argument("--method", choices=("grid", "random"), default=None,
                   help="override the file's method (default: the file's)")
    p.add_argument("--out", default=None, help="output directory (default: runs/sweep-<file name>-<time>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search's draws (default: %(default)s)")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process instead of a subprocess per run (default: off)")
    p.add_argument("--dry-run", action="store_true", help="print the runs' commands and stop (default: off)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym sweep``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    prog = "agentgym sweep"
    try:
        spec = load_sweep(args.config)
        if args.method:
            spec = dataclasses.replace(spec, method=args.method)
        points = sweep_points(spec, args.count, args.seed)
        _check_train_args(spec, points, extra)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"{prog}: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, point in enumerate(points):
            print(f"[{i + 1}/{len(points)}] agentgym train " + " ".join([*spec.base_args, *point_args(point), *extra]))
        return 0
    out = Path(args.out or Path("runs") / f"sweep-{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = run_sweep(spec, out, args.count, args.seed, extra, in_process=args.in_process)
    print()
    print(results_table(results, spec))
    print(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'curves.png'}")
    return 0 if all(r.status == "ok" for r in results) else 1


def _check_train_args(spec: SweepSpec, points: Sequence[dict[str, Any]], extra: Sequence[str]) -> None:
    """Parse every run's arguments before the first run starts, so a typo fails in a second, not after a run."""
    from agentgym.training.train_config import CLI_ALIASES, TrainConfig

    for point in points:
        cfg = parse_cli(TrainConfig, [*spec.base_args, *point_args(point), *extra], CLI_ALIASES)
        cfg.algo_config()
