"""The benchmark suite: algorithms x envs x seeds, summarised as a table, JSON and learning curves.

``agentgym bench`` (also ``python benchmarks/run_suite.py``) trains every combination, then writes into the output
directory ``results.md`` (mean +- std over seeds of the final success rate and of the area under the success
curve), ``results.json`` (the same plus every run's numbers) and ``curves-ENV.png`` (one curve per algorithm, seeds
shaded). Each run keeps its run directory under ``runs/`` for ``agentgym plot`` and ``agentgym inspect``.

By default the policy is the tiny random model of :mod:`agentgym.tiny` on small GuessNumber settings, so the
whole suite runs in minutes on a laptop CPU; ``--real-model`` switches to the embedded SmolLM2-135M-Instruct with
env settings and a learning rate that suit it (hours on a CPU).

Final success is the mean success rate over the last ``max(1, iterations // 10)`` iterations; the area under the
curve is the mean success rate over all iterations (1.0 would be success from the first iteration on).
"""

from __future__ import annotations

import argparse

from agentgym.options import ArgumentParser
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class EnvSetting:
    """An env of the suite: the registered id, its arguments and how many tokens a turn may take."""

    env: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 32


TINY_ENVS: dict[str, EnvSetting] = {
    "guess3": EnvSetting("agentgym/GuessNumber-v0", dict(low=1, high=3, max_turns=2, system_prompt=None), 1),
    "guess5": EnvSetting("agentgym/GuessNumber-v0", dict(low=1, high=5, max_turns=3, system_prompt=None), 1),
}
"""Envs a tiny random model learns in tens of iterations (one-token guesses)."""

REAL_ENVS: dict[str, EnvSetting] = {
    "guess10": EnvSetting("agentgym/GuessNumber-v0", dict(low=1, high=10, max_turns=4), 8),
    "add": EnvSetting("agentgym/Arithmetic-v0", dict(num_operands=2, max_operand=20, ops="+", allow_tool=False,
                                                     max_turns=1), 16),
}
"""Envs for SmolLM2-135M-Instruct (``--real-model``)."""

TINY_TRAIN = dict(model="tiny", iterations=20, groups_per_iteration=8, group_size=8, lr=1e-2, value_lr=3e-3,
                  micro_batch_size=64)
"""Training settings with the tiny model."""

REAL_TRAIN = dict(model="SmolLM2-135M-Instruct", iterations=30, groups_per_iteration=4, group_size=8, lr=1e-6,
                  value_lr=1e-4, micro_batch_size=8)
"""Training settings with the embedded SmolLM2-135M-Instruct."""


@dataclass
class SuiteRun:
    """One training run of the suite and its summary numbers."""

    env: str
    algo: str
    seed: int
    run_dir: str
    final_success: float
    auc_success: float
    final_reward: float
    wall_s: float
    iterations: int
    status: str = "ok"


def _final_window(n: int) -> int:
    return max(1, n // 10)


def run_one(setting: EnvSetting, env_name: str, algo: str, seed: int, base: dict[str, Any], out: Path,
            keep_checkpoints: bool = False) -> SuiteRun:
    """Train one (env, algo, seed) and summarise its success curve."""
    from agentgym.workflow.config import apply_overrides
    from agentgym.training.plot import area_under_curve, final_value
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import CLI_ALIASES, TrainConfig

    run_dir = out / "runs" / f"{env_name}-{algo}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = TrainConfig(env=setting.env, env_kwargs=dict(setting.env_kwargs), algo=algo, seed=seed,
                      max_new_tokens=setting.max_new_tokens, wandb=False, progress=False, export=False)
    cfg = apply_overrides(cfg, base, CLI_ALIASES)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), seed=seed, algo=algo)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    wall = time.perf_counter() - t0
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    success = [h["success_rate"] for h in history]
    reward = [h["reward_mean"] for h in history]
    w = _final_window(len(history))
    return SuiteRun(env_name, algo, seed, str(run_dir), final_value(success, w), area_under_curve(success),
                    final_value(reward, w), wall, len(history))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def summarize(runs: Sequence[SuiteRun]) -> list[dict[str, Any]]:
    """Per (env, algo): mean and std over seeds of final success, AUC and final reward, and mean time per run."""
    groups: dict[tuple[str, str], list[SuiteRun]] = {}
    for r in runs:
        groups.setdefault((r.env, r.algo), []).append(r)
    rows = []
    for (env, algo), members in groups.items():
        row: dict[str, Any] = {"env": env, "algo": algo, "seeds": len(members)}
        for key in ("final_success", "auc_success", "final_reward"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([getattr(m, key) for m in members])
        row["wall_s_mean"] = sum(m.wall_s for m in members) / len(members)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a markdown table (mean ± std over seeds)."""
    lines = ["| env | algorithm | seeds | final success | AUC (success) | final reward | time/run (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in ("final_success", "auc_success", "final_reward")]
        lines.append(f"| {r['env']} | {r['algo']} | {r['seeds']} | " + " | ".join(cells) + f" | {r['wall_s_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def run_suite(
    algos: Sequence[str],
    envs: dict[str, EnvSetting],
    seeds: Sequence[int],
    out_dir: str | Path,
    train: dict[str, Any],
    keep_checkpoints: bool = False,
    echo: bool = True,
) -> tuple[list[SuiteRun], list[dict[str, Any]]]:
    """Run every (env, algo, seed); write results.md, results.json and curves-ENV.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[SuiteRun] = []
    total = len(algos) * len(envs) * len(seeds)
    settings = {"algos": list(algos), "envs": {k: dataclasses.asdict(v) for k, v in envs.items()},
                "seeds": list(seeds), "train": train}
    for env_name, setting in envs.items():
        for algo in algos:
            for seed in seeds:
                if echo:
                    print(f"[{len(runs) + 1}/{total}] {env_name} {algo} seed {seed}", flush=True)
                run = run_one(setting, env_name, algo, seed, train, out, keep_checkpoints)
                runs.append(run)
                if echo:
                    print(f"    final success {run.final_success:.3f}, auc {run.auc_success:.3f}, "
                          f"{run.wall_s:.1f} s", flush=True)
                rows = summarize(runs)
                (out / "results.md").write_text(markdown_table(rows))
                (out / "results.json").write_text(json.dumps(
                    {"settings": settings, "summary": rows, "runs": [dataclasses.asdict(r) for r in runs]},
                    indent=2, default=str))
    from agentgym.training.plot import load_run, plot_runs

    for env_name in envs:
        members = [load_run(r.run_dir) for r in runs if r.env == env_name]
        plot_runs(members, out / f"curves-{env_name}.png", ("success_rate", "reward_mean"),
                  title=f"{env_name}: mean over {len(seeds)} seeds, ± 1 std shaded")
    return runs, summarize(runs)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as overrides (read with each option's type, like ``agentgym train --KEY VALUE``)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set takes KEY=VALUE (an agentgym train option), got {item!r}")
        out[key.lstrip("-")] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="agentgym bench",
        description="Benchmark suite: train algorithms x envs x seeds and write results.md (mean ± std over seeds "
        "of final success and area under the success curve), results.json and curves-ENV.png.",
    )
    p.add_argument("--algos", default="grpo,rloo,ppo",
                   help="comma-separated algorithms, see `agentgym algos` (default: %(default)s)")
    p.add_argument("--envs", default=None,
                   help=f"comma-separated env settings ({', '.join(TINY_ENVS)} with the tiny model; "
                   f"{', '.join(REAL_ENVS)} with --real-model) or registered env ids "
                   "(default: guess3, or guess10 with --real-model)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per combination: 0..N-1 (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"iterations per run (default: {TINY_TRAIN['iterations']})")
    p.add_argument("--real-model", action="store_true",
                   help="train SmolLM2-135M-Instruct (hours on a CPU) instead of the tiny model (default: off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an agentgym train option for every run, e.g. --set algo.kl_coef=0 --set lr=1e-3 "
                   "(repeatable; default: none)")
    p.add_argument("--out", default="benchmarks/results/suite", help="output directory (default: %(default)s)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's checkpoints (default: deleted after the run)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym bench``."""
    args = build_parser().parse_args(argv)
    prog = "agentgym bench"
    import agentgym
    from agentgym.algos import DESCRIPTIONS

    presets = REAL_ENVS if args.real_model else TINY_ENVS
    train = dict(REAL_TRAIN if args.real_model else TINY_TRAIN)
    if args.iterations:
        train["iterations"] = args.iterations
    try:
        train.update(_parse_sets(args.set))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in algos if a not in DESCRIPTIONS]
    if unknown:
        print(f"{prog}: error: unknown algorithms {unknown}; choose from {', '.join(DESCRIPTIONS)}", file=sys.stderr)
        return 2
    names = [e.strip() for e in (args.envs or ("guess10" if args.real_model else "guess3")).split(",") if e.strip()]
    envs: dict[str, EnvSetting] = {}
    for name in names:
        if name in presets:
            envs[name] = presets[name]
        elif name in agentgym.registry:
            envs[name.split("/")[-1]] = EnvSetting(name, {}, int(train.get("max_new_tokens", 32)))
        else:
            print(f"{prog}: error: unknown env {name!r}: use one of {', '.join(presets)} or a registered id "
                  f"(agentgym envs)", file=sys.stderr)
            return 2
    if args.seeds < 1:
        print(f"{prog}: error: --seeds must be at least 1", file=sys.stderr)
        return 2
    try:  # check every option before the first run starts
        from agentgym.workflow.config import apply_overrides
        from agentgym.training.train_config import CLI_ALIASES, TrainConfig

        for algo in algos:
            dataclasses.replace(apply_overrides(TrainConfig(), train, CLI_ALIASES), algo=algo).algo_config()
    except (KeyError, ValueError, TypeError) as e:
        print(f"{prog}: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    _, rows = run_suite(algos, envs, list(range(args.seeds)), out, train, args.keep_checkpoints)
    print()
    print(markdown_table(rows))
    print(f"{len(algos) * len(envs) * args.seeds} runs in {time.perf_counter() - t0:.0f} s; wrote "
          f"{out / 'results.md'}, {out / 'results.json'} and curves-*.png")
    return 0
