"""Run logging: JSONL metrics in the run directory, a console summary, and wandb.

wandb follows ``WANDB_MODE``; without credentials (no ``WANDB_API_KEY`` and no login) it runs offline, so a run
never waits on the network; offline runs land in ``RUN_DIR/wandb/`` (``wandb sync`` uploads them later). Inside a
wandb sweep (a process started by ``wandb agent``) the logger joins the agent's run. The logger watches the loop
and never steers it.

Resuming (``resume_step``): a run killed after logging an iteration but before checkpointing it logs that
iteration again once resumed. So the logger first drops what follows the checkpoint's step from ``metrics.jsonl``
and ``episodes.jsonl``, and continues the run's wandb run (its id is kept in ``RUN_DIR/wandb_run_id``) without
sending the steps wandb already has again: wandb cannot forget a step, so for those steps it keeps the records of
the killed process while ``metrics.jsonl`` holds the resumed ones (the same numbers, up to timings, for a seeded
run).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

SUMMARY_KEYS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", ("reward_mean",), ".3f"),
    ("success", ("success_rate",), ".3f"),
    ("turns", ("turns_mean",), ".2f"),
    ("tokens", ("episode_tokens_mean",), ".1f"),
    ("kl", ("actor/kl_ref", "actor/approx_kl"), ".2e"),
    ("entropy", ("actor/entropy",), ".3f"),
    ("clip", ("actor/clip_frac",), ".3f"),
    ("gen tok/s", ("rollout_tokens_per_s",), ".0f"),
    ("train tok/s", ("train_tokens_per_s",), ".0f"),
    ("mem MiB", ("peak_rss_mb",), ".0f"),
    ("s", ("iteration_s",), ".1f"),
)
"""The console line: (label, metric names tried in order, format)."""


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process in MiB (``peak_rss_mb``) and, when CUDA is in use, the peak memory
    allocated on the current GPU (``cuda_peak_mb``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    torch = sys.modules.get("torch")  # only when the program already uses torch; never import it here
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def clock(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def summary_line(record: dict[str, Any]) -> str:
    """The per-iteration console summary of a metrics record."""
    parts = []
    for label, keys, fmt in SUMMARY_KEYS:
        for key in keys:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"{label} {value:{fmt}}")
                break
    return " · ".join(parts)


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
        name: the wandb run name (default: the run directory's name).
        resume_step: the step of the checkpoint a resumed run starts from: records of later iterations are removed
            from ``metrics.jsonl`` and ``episodes.jsonl`` (each rewritten to a temporary file, then renamed over
            it), the wandb run of the killed process is continued, and steps up to the last one it was sent are not
            sent again. ``None``: a fresh run; both files are appended to as they are.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        use_wandb: bool = True,
        project: str = "agentgym",
        console: bool = True,
        name: str | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.console = Console(stderr=True) if console else None
        self.wandb_run = None
        # wandb is sent only steps after this one (it already has the earlier ones).
        self.wandb_sent_step: int | None = None
        logged_step = None
        if resume_step is not None:
            logged_step = trim_jsonl(self.path, resume_step)
            trim_jsonl(self.run_dir / EPISODES_FILE, resume_step)
        if use_wandb:
            import wandb

            if wandb.run is not None and os.environ.get("WANDB_SWEEP_ID"):
                # A wandb agent's run that agentgym.workflow.sweep.apply_wandb_config already joined: log into it.
                self.wandb_run = wandb.run
                self.wandb_run.config.update(config or {}, allow_val_change=True)
                self.wandb_sent_step = resume_step
                return
            id_file = self.run_dir / WANDB_ID_FILE
            previous = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else ""
            resume: dict[str, Any] = {"id": previous, "resume": "allow"} if previous else {}
            self.wandb_run = wandb.init(
                project=project,
                name=name or self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                mode=_wandb_mode(),  # type: ignore[arg-type]
                reinit="finish_previous",
                settings=wandb.Settings(quiet=True),  # no history/summary dump at the end: the run prints its own
                **resume,
            )
            if resume_step is not None:
                self.wandb_sent_step = resume_step
                if previous and logged_step is not None:  # the continued run has all the killed process logged
                    self.wandb_sent_step = max(resume_step, logged_step)
            replace_text(id_file, self.wandb_run.id)

    def log(self, metrics: dict[str, Any], step: int, note: str = "") -> None:
        """Append one iteration's metrics (peak memory added when missing) to every sink; ``note`` ends the console
        line (e.g. the time left)."""
        record = {"iteration": step, **{k: _plain(v) for k, v in metrics.items()}}
        for k, v in peak_memory().items():
            record.setdefault(k, v)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None and (self.wandb_sent_step is None or step > self.wandb_sent_step):
            self.wandb_run.log(record, step=step)
        if self.console is not None:
            line = summary_line(record) + (f" · {note}" if note else "")
            self.console.print(f"[bold]iter {step}[/bold] " + line, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


EPISODES_FILE = "episodes.jsonl"
WANDB_ID_FILE = "wandb_run_id"
"""In the run directory: the id of the run's wandb run, which a resumed run continues."""


def trim_jsonl(path: str | Path, last_step: int) -> int | None:
    """Drop the records of a JSONL file whose ``"iteration"`` is after ``last_step``; returns the largest iteration
    the file held (``None``: none, or no file).

    Records without an integer ``"iteration"`` stay, and a line that is not JSON (the last one, cut short by a
    kill) goes. The file is rewritten only when something goes, to a temporary file renamed over it, so a kill
    during the trim leaves the old file or the new one.
    """
    path = Path(path)
    if not path.is_file():
        return None
    kept: list[str] = []
    highest: int | None = None
    dropped = False
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                dropped = True
                continue
            step = record.get("iteration") if isinstance(record, dict) else None
            if isinstance(step, int) and not isinstance(step, bool):
                highest = step if highest is None else max(highest, step)
                if step > last_step:
                    dropped = True
                    continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        replace_text(path, "".join(kept))
    return highest


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a kill leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def combine_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """One metrics dict from several (optimizer steps, processes): the mean of each key over the records that have
    it, the max for keys ending in _max and the min for keys ending in _min."""
    out: dict[str, float] = {}
    for key in sorted({k for m in records if m for k in m}):
        values = [m[key] for m in records if m and key in m]
        if key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    return out


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
