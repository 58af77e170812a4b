"""Run logging: JSONL metrics in the run directory, a console summary, and wandb.

wandb follows ``WANDB_MODE``; without credentials (no ``WANDB_API_KEY`` and no login) it runs offline, so a run
never waits on the network. The logger watches the loop and never steers it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console

SUMMARY_KEYS = ("reward_mean", "success_rate", "turns_mean", "kl", "entropy", "clip_frac", "iteration_s")


def _wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists():
        return "online"
    return "offline"


class RunLogger:
    """Writes ``metrics.jsonl`` in ``run_dir``, prints a line per iteration, and mirrors to wandb.

    Args:
        run_dir: where ``metrics.jsonl`` goes.
        config: the resolved run config (logged to wandb).
        use_wandb: log to wandb too (mode from ``WANDB_MODE``, else offline without credentials).
        project: the wandb project.
        console: print a summary line per iteration.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        use_wandb: bool = True,
        project: str = "agentgym",
        console: bool = True,
        name: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.console = Console(stderr=True) if console else None
        self.wandb_run = None
        if use_wandb:
            import wandb

            self.wandb_run = wandb.init(
                project=project,
                name=name or self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                mode=_wandb_mode(),  # type: ignore[arg-type]
                reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"iteration": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(record, step=step)
        if self.console is not None:
            parts = [f"{k}={record[k]:.4g}" for k in SUMMARY_KEYS if isinstance(record.get(k), (int, float))]
            self.console.print(f"[bold]iter {step}[/bold] " + " ".join(parts), highlight=False)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
