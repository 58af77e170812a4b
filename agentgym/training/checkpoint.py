"""Checkpoints: safetensors weights, optimizer state, RNG states and the step, written atomically.

A checkpoint is a directory ``step_NNNNNN`` written under a temporary name and renamed into place, so a killed
process leaves either the old checkpoint or the new one, never half of one. ``latest`` (a text file, replaced
atomically) names the newest. ``state.json`` is written last and lists the checkpoint's files.

Saving a step that already has a directory (a resumed run saving the step it resumed from) moves the old directory
aside (``.step_NNNNNN.old``) before renaming the new one into place, and deletes it only once ``latest`` is
rewritten: a directory ``latest`` names is never deleted file by file. :func:`resolve_checkpoint` reads ``latest``
and, should it name a directory that is missing or incomplete, takes that directory's old copy, else the newest
complete ``step_*`` directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

on_write: Callable[[Path], None] | None = None
"""Test hook, ``None`` in normal use. When set, :func:`save_checkpoint` calls it with each path it has just written
or renamed: each file of the temporary directory, the old copy moved aside, the directory renamed into place, and
``latest``. Tests set it to kill the process there (``os.kill(os.getpid(), signal.SIGKILL)``)."""

_STEP_DIR = re.compile(r"step_(\d+)")


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Only parameters that train (all of them, or the LoRA adapters); clones break weight tying for safetensors.
    return {n: p.detach().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def _written(path: Path) -> Path:
    if on_write is not None:
        on_write(path)
    return path


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/step_{step:06d}`` and point ``directory/latest`` at it; returns the checkpoint path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.tmp"
    old = root / f".{final.name}.old"
    for stale in root.glob(".step_*.tmp"):  # left by killed saves; never read
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    files = []
    for name, module in modules.items():
        save_file(_trainable_state(module), str(tmp / f"{name}.safetensors"))
        files.append(_written(tmp / f"{name}.safetensors").name)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    files.append(_written(tmp / "optimizer.pt").name)
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        tmp / "rng.pt",
    )
    files.append(_written(tmp / "rng.pt").name)
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {}), "files": files}, indent=2))
    _written(tmp / "state.json")
    if final.exists():
        # `latest` may name `final`: move it aside whole (deleting it file by file would leave `latest` naming a
        # half-deleted checkpoint) and keep the copy until `latest` is rewritten.
        shutil.rmtree(old, ignore_errors=True)  # an old copy a killed save left while `final` existed: not needed
        os.replace(final, old)
        _written(old)
    os.replace(tmp, final)
    _written(final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    _written(root / "latest")
    for copy in root.glob(".step_*.old"):  # `latest` names a complete checkpoint again: no old copy is needed
        shutil.rmtree(copy, ignore_errors=True)
    return final


def _complete(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds a ``state.json`` and every file it lists (older checkpoints list none)."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError):
        return False
    names = state.get("files", []) if isinstance(state, dict) else []
    return isinstance(names, list) and all((ckpt / str(n)).is_file() for n in names)


def _from_latest(root: Path) -> Path:
    """The checkpoint ``root/latest`` names; if that one is missing or incomplete (a kill while it was replaced),
    its old copy, else the newest complete ``step_*`` directory."""
    name = (root / "latest").read_text().strip()
    if name and _complete(root / name):
        return root / name
    candidates = [root / f".{name}.old"] if name else []
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    candidates += [p for _, p in sorted(steps, reverse=True)]
    for cand in candidates:
        if _complete(cand):
            warnings.warn(f"{root}/latest names {name!r}, which is missing or incomplete; using {cand.name}.",
                          stacklevel=3)
            return cand
    raise FileNotFoundError(f"no complete checkpoint in {root}: latest names {name!r}, which is missing or "
                            "incomplete, and no step_* directory is complete")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a checkpoints directory (its ``latest``) or a run directory."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "state.json").exists():
            return cand
        if (cand / "latest").exists():
            return _from_latest(cand)
    raise FileNotFoundError(f"no checkpoint at {path}: expected a step_* directory, a checkpoints dir or a run dir")


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Restore weights (and optimizer, RNG) from a checkpoint; returns its ``state.json``."""
    ckpt = resolve_checkpoint(path)
    for name, module in modules.items():
        state = load_file(str(ckpt / f"{name}.safetensors"))
        params = dict(module.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise KeyError(f"{ckpt}/{name}.safetensors holds parameters the model lacks: {missing[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return json.loads((ckpt / "state.json").read_text())
