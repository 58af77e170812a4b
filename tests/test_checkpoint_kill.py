"""A process killed (SIGKILL) in the middle of writing a checkpoint: resuming loads a complete one.

A driver subprocess saves two complete checkpoints, then forks a child per kill point that saves a third and kills
itself at that point (through ``agentgym.training.checkpoint.on_write``, after some of the checkpoint's files are written, or
in the middle of deleting an old copy). This process then checks what a resume would see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from agentgym.training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint

DRIVER = textwrap.dedent('''
    import json, os, shutil, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from agentgym.training import checkpoint
    sys.path.insert(0, sys.argv[3])
    from test_checkpoint_kill import trained

    def save(root, step, seed):
        checkpoint.save_checkpoint(root, step, *trained(seed), {"seed": seed})

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def kill_at_write(k):
        seen = []
        def hook(path):
            seen.append(path)
            if len(seen) > k:
                kill()
        checkpoint.on_write = hook

    def kill_in_rmtree():  # in the middle of deleting a directory, after its first file
        def rmtree(path, ignore_errors=False):
            if Path(path).exists():
                sorted(p for p in Path(path).iterdir() if p.is_file())[0].unlink()
                kill()
        shutil.rmtree = rmtree

    def run(base, resave, mode):
        points = []
        for k in range(64 if mode == "hook" else 1):
            root = base / f"kill_{k}"
            save(root, 0, seed=0)
            save(root, 1, seed=1)
            pid = os.fork()
            if pid == 0:  # the child saves a third checkpoint and is killed in the middle
                try:
                    kill_at_write(k) if mode == "hook" else kill_in_rmtree()
                    save(root, 1 if resave else 2, seed=2)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            points.append({"root": str(root), "killed": killed})
            if not killed:
                break
        return points

    scenarios = json.loads(sys.argv[2])
    print(json.dumps({name: run(Path(sys.argv[1]) / name, resave, mode) for name, resave, mode in scenarios}))
''')


SCENARIOS = [("new-step", False, "hook"), ("resave-latest-step", True, "hook"), ("resave-rmtree", True, "rmtree")]


@pytest.fixture(scope="module")
def kills(tmp_path_factory) -> dict[str, list[dict]]:
    """Per scenario, the run directory and whether the child was killed, for each kill point in order."""
    base = tmp_path_factory.mktemp("kills")
    args = [str(base), json.dumps(SCENARIOS), str(Path(__file__).parent)]
    out = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def trained(seed: int) -> tuple[dict[str, torch.nn.Module], torch.optim.Optimizer]:
    """A policy and value head after one AdamW step from seed ``seed`` (what the driver saves)."""
    torch.manual_seed(seed)
    mods = {"model": torch.nn.Linear(4, 3), "value_head": torch.nn.Linear(3, 1)}
    opt = torch.optim.AdamW([p for m in mods.values() for p in m.parameters()], lr=0.1)
    mods["value_head"](mods["model"](torch.ones(2, 4))).sum().backward()
    opt.step()
    return mods, opt


def _blank() -> tuple[dict[str, torch.nn.Module], torch.optim.Optimizer]:
    torch.manual_seed(99)
    mods = {"model": torch.nn.Linear(4, 3), "value_head": torch.nn.Linear(3, 1)}
    return mods, torch.optim.AdamW([p for m in mods.values() for p in m.parameters()], lr=0.1)


def _assert_complete(ckpt: Path) -> None:
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["model.safetensors", "optimizer.pt", "rng.pt", "state.json", "value_head.safetensors"], ckpt
    mods, opt = _blank()
    load_checkpoint(ckpt, mods, opt)
    assert opt.state_dict()["state"], f"{ckpt} has no optimizer state"


def _resume(root: Path) -> tuple[int, int]:
    """(step, seed) of what a resume from ``root`` loads; its weights and optimizer are exactly that save's."""
    mods, opt = _blank()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_checkpoint(root, mods, opt)
    saved, saved_opt = trained(state["seed"])
    for name, module in mods.items():
        for (n, p), q in zip(module.named_parameters(), saved[name].parameters()):
            assert torch.equal(p, q), f"{root}: {name}.{n} is not seed {state['seed']}'s"
    exp_avg = [s["exp_avg"] for s in opt.state_dict()["state"].values()]
    assert all(torch.equal(a, b["exp_avg"]) for a, b in zip(exp_avg, saved_opt.state_dict()["state"].values()))
    return state["step"], state["seed"]


def _check_every_checkpoint_is_whole(root: Path) -> None:
    # Every directory `latest` could resolve to: the one it names, and each step_* (the fallbacks).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_complete(resolve_checkpoint(root))
    for ckpt in sorted(root.glob("step_*")):
        _assert_complete(ckpt)


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "resave-latest-step"])
def test_a_kill_between_the_files_of_a_checkpoint_resumes_from_a_complete_one(kills, resave):
    points = kills["resave-latest-step" if resave else "new-step"]
    killed = [p for p in points if p["killed"]]
    # Each file (2 modules, optimizer, rng, state.json), the rename into place and latest; a re-save also moves
    # the old directory aside. The last run went through without a kill.
    assert len(killed) == (8 if resave else 7) and not points[-1]["killed"]
    resumed = []
    for p in killed:
        root = Path(p["root"])
        _check_every_checkpoint_is_whole(root)
        resumed.append(_resume(root))
    if resave:
        # The old step 1 until the new one is renamed into place (its 7th write), then the new step 1.
        assert resumed == [(1, 1)] * 6 + [(1, 2)] * 2
    else:
        # Step 1, the previous complete checkpoint, until `latest` names step 2 (the last write).
        assert resumed == [(1, 1)] * 6 + [(2, 2)]
        assert not list(Path(killed[3]["root"]).glob("step_000002")), "a half-written step 2 is visible"


def test_a_kill_while_an_old_copy_is_deleted_leaves_latest_whole(kills):
    """Re-saving the step `latest` names, killed while a directory is deleted file by file."""
    (point,) = kills["resave-rmtree"]
    assert point["killed"]
    root = Path(point["root"])
    _check_every_checkpoint_is_whole(root)
    assert _resume(root)[0] == 1
    # The next save cleans up what the killed one left.
    save_checkpoint(root, 2, *trained(3), {"seed": 3})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000000", "step_000001", "step_000002"]
