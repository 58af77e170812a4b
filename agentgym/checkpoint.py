"""Checkpoints: safetensors weights, optimizer state, RNG states and the step, written atomically.

A checkpoint is a directory ``step_NNNNNN`` written under a temporary name and renamed into place, so a crash
leaves either the old checkpoint or the new one, never half of one. ``latest`` (a text file, replaced atomically)
names the newest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Only parameters that train (all of them, or the LoRA adapters); clones break weight tying for safetensors.
    return {n: p.detach().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


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
    tmp = root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        save_file(_trainable_state(module), str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        tmp / "rng.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a checkpoints directory (its ``latest``) or a run directory."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "state.json").exists():
            return cand
        if (cand / "latest").exists():
            return cand / (cand / "latest").read_text().strip()
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
