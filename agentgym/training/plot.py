"""Learning curves from runs' ``metrics.jsonl``: ``agentgym plot RUN_DIR...`` writes a PNG.

Runs whose configs are equal except for the seed are one curve: the mean over seeds, with a band of one standard
deviation (or min..max) shaded around it. Curves are labelled by the config keys that differ between them.
"""

from __future__ import annotations

import argparse

from agentgym.options import ArgumentParser
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METRICS_FILE = "metrics.jsonl"

IGNORED_KEYS = frozenset({
    "seed", "run_dir", "resume", "wandb", "wandb_project", "progress", "export", "checkpoint_every",
    "save_episodes", "env_threads",
})
"""Config keys that do not change what a run learns (the seed, where it writes, how it reports)."""

DEFAULT_METRICS = ("success_rate", "reward_mean")


@dataclass
class Run:
    """One run directory: its config (``config.json``, may be empty) and its metric records."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def series(self, metric: str, x: str = "iteration") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of a metric over the run; ``x`` is ``iteration`` or a cumulative sum of a per-iteration
        metric (``wall_time`` sums ``iteration_s``, ``episodes`` sums ``episodes``)."""
        rows = [r for r in self.records if isinstance(r.get(metric), (int, float))]
        y = np.array([float(r[metric]) for r in rows])
        if x == "iteration":
            xs = np.array([float(r.get("iteration", i + 1)) for i, r in enumerate(rows)])
        else:
            src = {"wall_time": "iteration_s", "episodes": "episodes"}.get(x, x)
            cum = np.cumsum([float(r.get(src) or 0.0) for r in self.records])
            index = {id(r): i for i, r in enumerate(self.records)}
            xs = np.array([cum[index[id(r)]] for r in rows])
        return xs, y


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path that holds ``metrics.jsonl``, else every such folder below it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / METRICS_FILE).is_file():
            found.append(p)
        elif p.is_file() and p.name == METRICS_FILE:
            found.append(p.parent)
        elif p.is_dir():
            below = sorted(f.parent for f in p.rglob(METRICS_FILE))
            if not below:
                raise FileNotFoundError(f"no {METRICS_FILE} in {p} or below: pass run directories of agentgym train")
            found.extend(below)
        else:
            raise FileNotFoundError(f"{p} does not exist: pass run directories of agentgym train")
    return list(dict.fromkeys(found))


def load_run(path: str | Path) -> Run:
    """Read a run directory's ``config.json`` (optional) and ``metrics.jsonl``."""
    path = Path(path)
    config: dict[str, Any] = {}
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    records = []
    lines = (path / METRICS_FILE).read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n != len(lines):  # a partial last line is a run still writing; anything else is damage
                    raise ValueError(f"{path / METRICS_FILE}:{n} is not a JSON record")
    return Run(path, config, records)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: ``{"env_kwargs": {"high": 3}}`` -> ``{"env_kwargs.high": 3}``."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_key(config: dict[str, Any], ignore: frozenset[str] = IGNORED_KEYS) -> str:
    """The identity of a config up to its seed (and other keys that do not change learning)."""
    flat = {k: v for k, v in flatten(config).items() if k.split(".")[0] not in ignore}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: Sequence[Run], ignore: frozenset[str] = IGNORED_KEYS) -> dict[str, list[Run]]:
    """Runs grouped by config minus the seed, labelled by the keys in which the groups differ."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = group_key(run.config, ignore) if run.config else f"run:{run.path}"
        groups.setdefault(key, []).append(run)
    configs = {k: json.loads(k) if not k.startswith("run:") else {} for k in groups}
    keys = sorted({kk for c in configs.values() for kk in c})
    varying = [kk for kk in keys if len({json.dumps(c.get(kk), default=str) for c in configs.values()}) > 1]
    labelled: dict[str, list[Run]] = {}
    for key, members in groups.items():
        cfg = configs[key]
        if not cfg:
            label = members[0].name
        elif varying:
            label = ", ".join(f"{kk}={_short(cfg.get(kk))}" for kk in varying)
        else:
            label = " ".join(str(cfg[kk]) for kk in ("env", "algo") if kk in cfg) or members[0].name
        while label in labelled:
            label += "'"
        labelled[label] = members
    return labelled


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def aggregate(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], band: str = "std"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds at each point index: ``(x, mean, low, high, count)``.

    Curves may differ in length; each point averages the curves that reach it. ``band`` is ``std`` (mean +- one
    standard deviation over seeds) or ``minmax``.
    """
    n = max((len(y) for _, y in curves), default=0)
    xs, mean, low, high, count = (np.full(n, np.nan) for _ in range(5))
    for i in range(n):
        ys = np.array([y[i] for _, y in curves if len(y) > i])
        xs[i] = np.mean([x[i] for x, y in curves if len(y) > i])
        mean[i], count[i] = ys.mean(), len(ys)
        if band == "minmax":
            low[i], high[i] = ys.min(), ys.max()
        else:
            sd = ys.std()
            low[i], high[i] = mean[i] - sd, mean[i] + sd
    return xs, mean, low, high, count


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (1: unchanged)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(np.asarray(y, dtype=float), 0, 0.0))
    out = np.empty(len(y))
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def final_value(y: Sequence[float], window: int = 1) -> float:
    """Mean of the last ``window`` values of a curve (NaN when empty)."""
    y = [v for v in y if v is not None]
    return float(np.mean(y[-max(1, window):])) if y else float("nan")


def area_under_curve(y: Sequence[float]) -> float:
    """Normalised area under a curve over iterations: the mean value (for success rate, a number in [0, 1])."""
    y = [v for v in y if v is not None]
    return float(np.mean(y)) if y else float("nan")


def plot_runs(
    runs: Sequence[Run],
    out: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    x: str = "iteration",
    band: str = "std",
    smoothing: int = 1,
    title: str | None = None,
) -> Path:
    """Draw one panel per metric, one curve per group of seeds; returns the PNG's path.

    Raises:
        ValueError: none of ``metrics`` is in any run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in metrics if any(isinstance(r.get(m), (int, float)) for run in runs for r in run.records)]
    if not present:
        available = sorted({k for run in runs for r in run.records for k, v in r.items() if isinstance(v, (int, float))})
        raise ValueError(f"none of the metrics {list(metrics)} is in these runs; available: {', '.join(available)}")
    groups = group_runs(runs)
    cols = 1 if len(present) == 1 else 2
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.0 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, present):
        for i, (label, members) in enumerate(groups.items()):
            curves = [run.series(metric, x) for run in members]
            curves = [(cx, smooth(cy, smoothing)) for cx, cy in curves if len(cy)]
            if not curves:
                continue
            xs, mean, low, high, _ = aggregate(curves, band)
            colour = colours[i % len(colours)]
            seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
            ax.plot(xs, mean, color=colour, label=label + seeds, linewidth=1.6)
            if len(curves) > 1:
                ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(metric)
        ax.set_xlabel({"wall_time": "wall time (s)"}.get(x, x))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    legend_rows = (len(labels) + 2) // 3 if handles else 0
    fig.tight_layout(rect=(0, 0.04 * legend_rows + 0.01, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="agentgym plot",
        description="Draw learning curves (PNG) from the metrics.jsonl of one or more runs. Runs with the same "
        "config except the seed are averaged into one curve with the seeds' spread shaded.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or folders holding run directories (a sweep's or a suite's output)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated metric names, one panel each (default: %(default)s)")
    p.add_argument("--x", default="iteration", choices=("iteration", "wall_time", "episodes"),
                   help="x axis: iteration, cumulative wall time or cumulative episodes (default: %(default)s)")
    p.add_argument("--band", default="std", choices=("std", "minmax"),
                   help="shaded band over seeds: mean +- one std, or min..max (default: %(default)s)")
    p.add_argument("--smooth", type=int, default=1,
                   help="trailing moving average over N iterations, 1 for none (default: %(default)s)")
    p.add_argument("--title", default=None, help="figure title (default: none)")
    p.add_argument("--out", default=None,
                   help="PNG path (default: RUN_DIR/curves.png for one run, else ./curves.png)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym plot``."""
    args = build_parser().parse_args(argv)
    try:
        dirs = find_runs(args.runs)
        runs = [load_run(d) for d in dirs]
        out = args.out or (dirs[0] / "curves.png" if len(dirs) == 1 else Path("curves.png"))
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        path = plot_runs(runs, out, metrics, x=args.x, band=args.band, smoothing=args.smooth, title=args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"agentgym plot: error: {e}", file=sys.stderr)
        return 2
    groups = group_runs(runs)
    print(f"wrote {path} ({len(runs)} runs in {len(groups)} curves)")
    for label, members in groups.items():
        print(f"  {label}: {', '.join(str(r.path) for r in members)}")
    return 0
