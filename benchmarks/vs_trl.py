"""agentgym's GRPO trainer vs TRL's GRPOTrainer, side by side in one run on this machine.

The setting (docs: BENCHMARKS.md, "TRL GRPOTrainer anchor"): SmolLM2-135M-Instruct in fp32 on the CPU; 64 prompts
"What is A+B? Answer with just the number." (A and B random 2-digit numbers, seed 0), one user message each;
reward 1.0 when the completion contains the right number. One step = 1 prompt x 8 completions of at most 64 new
tokens at temperature 1.0, then one AdamW update at learning rate 1e-6, no KL (beta 0), one pass over the batch.
TRL's GRPOConfig gets exactly those values (its other options, the "dapo" token-mean loss included, at their
defaults); agentgym runs ``grpo`` with ``kl_coef=0`` and the same token-mean aggregation.

Each side runs in its own subprocess, so peak resident memory is measured separately. The table reports the median
wall time of steps 2..N (the first step pays one-time costs), peak RSS, and the ratios TRL / agentgym.

    pip install trl==1.16.0     # the TRL side (an optional extra); the rest is agentgym's own dependencies
    python benchmarks/vs_trl.py --steps 6

Writes ``benchmarks/results/vs_trl.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUM_PROMPTS = 64
GROUP = 8
MAX_NEW_TOKENS = 64
LR = 1e-6
QUESTION = "What is {a}+{b}? Answer with just the number."


def prompts(seed: int = 0, n: int = NUM_PROMPTS) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs: random 2-digit A and B."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append((QUESTION.format(a=a, b=b), str(a + b)))
    return out


def correct(text: str, answer: str) -> float:
    """1.0 when ``text`` contains ``answer`` as a whole number."""
    return 1.0 if re.search(rf"(?<!\d){answer}(?!\d)", text) else 0.0


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# -- agentgym side --------------------------------------------------------------------------------------------------
def our_config(steps: int, model_dir: str, run_dir: str, always_step: bool = False):
    """agentgym's ``TrainConfig`` for the benchmark (and the env it names, registered as ``bench/AddTwo-v0``).

    ``always_step`` turns off the skip of steps without learning signal, so that every step does the forward and
    backward pass TRL does (a like-for-like timing; the default skips them, which is what a run does).
    """
    import agentgym
    from agentgym.message_env import MessageEnv
    from agentgym.training.train_config import TrainConfig

    data = prompts()

    class AddTwo(MessageEnv):
        """One question of the benchmark; reset seed s asks question s mod 64."""

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.question, self.answer = data[(seed or 0) % len(data)]
            return [{"role": "user", "content": self.question}], {}

        def step(self, text):
            r = correct(text, self.answer)
            return [], r, True, False, {"success": r > 0}

    agentgym.register("bench/AddTwo-v0", AddTwo)
    return TrainConfig(
        env="bench/AddTwo-v0", model=model_dir, algo="grpo",
        algo_kwargs={"kl_coef": 0.0, "loss_agg": "token-mean", "skip_without_signal": not always_step},
        groups_per_iteration=1, group_size=GROUP, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, lr=LR,
        epochs=1, minibatches=1, micro_batch_size=GROUP, max_grad_norm=1.0, seed=0, iterations=steps,
        run_dir=run_dir, wandb=False, progress=False, export=False, save_episodes=GROUP,
    )


def run_ours(steps: int, model_dir: str, always_step: bool = False) -> dict:
    import torch

    from agentgym.training.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="vs_trl_ours_")
    cfg = our_config(steps, model_dir, run_dir, always_step)
    t_load = time.perf_counter()
    trainer = Trainer(cfg)
    load_s = time.perf_counter() - t_load
    times, details = [], []
    try:
        for i in range(steps):
            t0 = time.perf_counter()
            m = trainer.step()
            times.append(time.perf_counter() - t0)
            print(f"agentgym step {i + 1}/{steps}: {times[-1]:.1f} s (generation {m['rollout_s']:.1f} s)",
                  file=sys.stderr, flush=True)
            details.append({k: m.get(k) for k in ("rollout_s", "train_s", "reward_mean", "episode_tokens_mean",
                                                   "engine_trainer_logprob_diff_max", "skipped_steps",
                                                   "trained_tokens")})
    finally:
        trainer.close()
    max_lens = {}
    for line in (Path(run_dir) / "episodes.jsonl").read_text().splitlines():
        rec = json.loads(line)
        n = len(rec["turns"][0]["action_ids"])
        max_lens[rec["iteration"]] = max(max_lens.get(rec["iteration"], 0), n)
    for i, d in enumerate(details):
        d["completion_tokens_max"] = max_lens.get(i + 1)
    return {"side": "agentgym-always-step" if always_step else "agentgym", "step_s": times, "steps": details,
            "load_s": load_s, "peak_rss_gib": _peak_rss_gib(),
            "threads": torch.get_num_threads()}


# -- TRL side -------------------------------------------------------------------------------------------------------
def run_trl(steps: int, model_dir: str) -> dict:
    try:
        import trl
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        raise SystemExit("TRL is not installed: pip install trl==1.16.0 (the version of the reference figures)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    data = prompts()
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in data])

    def reward(completions, answer, **_):
        return [correct(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.logs, self._t0 = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    out = tempfile.mkdtemp(prefix="vs_trl_trl_")
    config = GRPOConfig(
        output_dir=out, per_device_train_batch_size=GROUP, num_generations=GROUP,
        max_completion_length=MAX_NEW_TOKENS, learning_rate=LR, beta=0.0, num_iterations=1,
        gradient_accumulation_steps=1, temperature=1.0, use_cpu=True, bf16=False, fp16=False, seed=0,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
    )
    t_load = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[timer])
    load_s = time.perf_counter() - t_load
    trainer.train()
    details = []
    for log in [entry for entry in timer.logs if "reward" in entry][:steps]:
        details.append({"reward_mean": log.get("reward"), "trl_step_time": log.get("step_time"),
                        "completion_tokens_mean": log.get("completions/mean_length"),
                        "completion_tokens_max": log.get("completions/max_length")})
    return {"side": "trl", "version": trl.__version__, "step_s": timer.times, "steps": details, "load_s": load_s,
            "peak_rss_gib": _peak_rss_gib(), "threads": torch.get_num_threads()}


# -- driver ---------------------------------------------------------------------------------------------------------
def _child(side: str, steps: int, model_dir: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(steps), "--model-dir", model_dir,
           "--threads", str(threads)]
    print(f"running the {side} side: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its output is above")
    return json.loads(lines[-1][len("RESULT "):])


def _median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def report(ours: dict, theirs: dict, always: dict | None = None) -> dict:
    """Ratios and a markdown table from both sides' results (``always``: ours without skipping steps)."""
    t_ours, t_trl = _median_after_first(ours["step_s"]), _median_after_first(theirs["step_s"])
    len_ours = _mean(s.get("episode_tokens_mean") for s in ours["steps"])
    len_trl = _mean(s.get("completion_tokens_mean") for s in theirs["steps"])
    max_ours = _mean(s.get("completion_tokens_max") for s in ours["steps"])
    max_trl = _mean(s.get("completion_tokens_max") for s in theirs["steps"])
    t_always = _median_after_first(always["step_s"]) if always else None
    summary = {
        "median_step_s": {"agentgym": t_ours, "trl": t_trl, "trl_over_agentgym": t_trl / t_ours,
                          "agentgym_always_step": t_always},
        "peak_rss_gib": {"agentgym": ours["peak_rss_gib"], "trl": theirs["peak_rss_gib"],
                         "trl_over_agentgym": theirs["peak_rss_gib"] / ours["peak_rss_gib"]},
        "completion_tokens_mean": {"agentgym": len_ours, "trl": len_trl},
        "completion_tokens_max_mean": {"agentgym": max_ours, "trl": max_trl},
        "reward_mean": {"agentgym": _mean(s.get("reward_mean") for s in ours["steps"]),
                        "trl": _mean(s.get("reward_mean") for s in theirs["steps"])},
    }

    def f(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    steps = len(ours["step_s"])
    summary["table"] = "\n".join([
        f"| GRPO step, SmolLM2-135M fp32, 1 prompt x {GROUP} completions, <= {MAX_NEW_TOKENS} new tokens | agentgym "
        f"| TRL {theirs.get('version', '')} GRPOTrainer | TRL / agentgym |",
        "|---|---|---|---|",
        f"| median step time, steps 2-{steps} (s) | {f(t_ours)} | {f(t_trl)} | {f(t_trl / t_ours)}x |",
        *([f"| median step time, every step updating (skip_without_signal off) (s) | {f(t_always)} | {f(t_trl)} | "
           f"{f(t_trl / t_always)}x |",
           f"| peak RSS, every step updating (GiB) | {f(always['peak_rss_gib'])} | {f(theirs['peak_rss_gib'])} | "
           f"{f(theirs['peak_rss_gib'] / always['peak_rss_gib'])}x |"] if always else []),
        f"| steps without learning signal (ours skips their update) | "
        f"{sum(1 for s in ours['steps'] if s.get('trained_tokens') == 0)} of {steps} | | |",
        f"| peak RSS (GiB) | {f(ours['peak_rss_gib'])} | {f(theirs['peak_rss_gib'])} | "
        f"{f(theirs['peak_rss_gib'] / ours['peak_rss_gib'])}x |",
        f"| mean completion length (tokens) | {f(len_ours, '.1f')} | {f(len_trl, '.1f')} | |",
        f"| mean of each step's longest completion (tokens) | {f(max_ours, '.1f')} | {f(max_trl, '.1f')} | |",
        f"| mean reward | {f(summary['reward_mean']['agentgym'], '.3f')} | {f(summary['reward_mean']['trl'], '.3f')} | |",
    ])
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="agentgym GRPO vs TRL GRPOTrainer: wall time per step and peak memory, "
                                "each side in its own subprocess.")
    p.add_argument("--steps", type=int, default=6, help="training steps per side; the median skips the first "
                   "(default: %(default)s)")
    p.add_argument("--model-dir", default=None,
                   help="the SmolLM2-135M-Instruct directory (default: agentgym's converted embedded model)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for both sides, 0 for torch's default (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results/vs_trl.json", help="JSON output (default: %(default)s)")
    p.add_argument("--side", choices=("ours", "ours-always", "trl"), default=None,
                   help="internal: run one side and print its result")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is excluded from the median)")
    if args.side:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.side == "trl":
            result = run_trl(args.steps, args.model_dir)
        else:
            result = run_ours(args.steps, args.model_dir, always_step=args.side == "ours-always")
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        print("TRL is not installed: pip install trl==1.16.0, then run this again.", file=sys.stderr)
        return 2
    from agentgym.models import default_model_dir

    model_dir = args.model_dir or str(default_model_dir())
    ours = _child("ours", args.steps, model_dir, args.threads)
    always = _child("ours-always", args.steps, model_dir, args.threads)
    theirs = _child("trl", args.steps, model_dir, args.threads)
    summary = report(ours, theirs, always)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setting": {"model": model_dir, "prompts": NUM_PROMPTS, "group": GROUP,
                                           "max_new_tokens": MAX_NEW_TOKENS, "lr": LR, "steps": args.steps},
                               "summary": summary, "agentgym": ours, "agentgym_always_step": always,
                               "trl": theirs}, indent=2))
    print()
    print(summary["table"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
