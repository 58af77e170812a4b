"""Where a training iteration's time and memory go: a per-phase profile and a memory breakdown.

    python benchmarks/trainer_profile.py                       # the default main job (agentgym train, all defaults)
    python benchmarks/trainer_profile.py --setting guess       # the earlier main job: GuessNumber, up to 7 turns
    python benchmarks/trainer_profile.py --setting vs_trl      # the GRPO setting of benchmarks/vs_trl.py
    python benchmarks/trainer_profile.py --setting spider      # the README's Spider GRPO setting
    python benchmarks/trainer_profile.py --activation-checkpointing off --iterations 3

Phases of an iteration: rollout (generation and env steps), batch (episodes -> TensorDict), score (old values,
reference logprobs: a forward pass, only when the algorithm needs one), update (forward+backward and optimizer
steps), push (new weights to the engine), logging. Each phase's peak resident memory is the kernel's high-water
mark of the process (VmHWM), reset when the phase starts and read when it ends, so the table says exactly which
phase sets the process's peak and by how much. A thread samples the resident size every 20 ms to read, at the
sampled peak, how much malloc held free (its slack: freed blocks it keeps for reuse).

The memory breakdown counts what the process holds at the peak of training: weights, the reference copy (KL),
gradients, AdamW's two moments, the engine's packed decode weights (freed while training) and its largest KV cache
(sized per generate call to prompt + new tokens of the rows in it), the activations of the largest micro-batch
(estimated from the model's shapes; with activation checkpointing only the blocks' inputs), the LM head's logits
(one chunk of policy tokens at a time), and what is left: the libraries' own memory and allocator slack.

Writes ``benchmarks/results/trainer_profile_<setting>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MiB = 2**20


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process, so the next reading is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class _PeakSampler:
    """The largest resident set size seen while it runs (sampled every 20 ms in a thread)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self.heap_free_at_peak = 0.0  # MiB malloc held free (allocator slack) when the peak was seen
        self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        from agentgym.training.allocator import heap_stats

        rss = _status("VmRSS")
        if rss > self.peak:
            heap = heap_stats()
            self.peak, self.heap_free_at_peak = rss, (heap["free"] / MiB if heap else float("nan"))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._read()

    def __enter__(self) -> "_PeakSampler":
        self.before = _status("VmHWM")  # the peak since the last reset: what ran between phases
        _reset_peak()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        self.peak = max(self.peak, _status("VmHWM"))  # exact: the kernel's high-water mark over the phase
        _reset_peak()


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def config(setting: str, iterations: int, run_dir: str, overrides: dict):
    from agentgym.training.train_config import TrainConfig

    if setting == "main":  # `agentgym train` with every default
        cfg = TrainConfig(iterations=iterations, run_dir=run_dir, wandb=False, progress=False, export=False)
    elif setting == "guess":  # the earlier main job: GuessNumber (up to 7 turns) with the defaults it had then
        cfg = TrainConfig(env="agentgym/GuessNumber-v0", iterations=iterations, groups_per_iteration=4, group_size=8,
                          max_new_tokens=32, lr=2e-6, run_dir=run_dir, wandb=False, progress=False, export=False)
    elif setting == "vs_trl":
        import vs_trl
        from agentgym.models import default_model_dir

        cfg = vs_trl.our_config(iterations, str(default_model_dir()), run_dir)
    elif setting == "spider":  # README: Spider, SFT warm start then GRPO (here from the base model: same shapes)
        cfg = TrainConfig(env="agentgym/SpiderSQL-v0", env_kwargs={"max_turns": 1, "reward_executes": 0.1},
                          algo="grpo", algo_kwargs={"kl_coef": 0.0}, iterations=iterations,
                          groups_per_iteration=4, group_size=4, max_new_tokens=96, lr=1e-5, micro_batch_size=8,
                          run_dir=run_dir, wandb=False, progress=False, export=False)
    else:
        raise SystemExit(f"unknown setting {setting!r}")
    import dataclasses

    return dataclasses.replace(cfg, **overrides)


class PhaseProfiler:
    """Wraps a Trainer's phases to time them and record each one's peak RSS."""

    PHASES = (("rollout", "_collect_batch"), ("score", "_score"), ("update", "update"),
              ("push", "engine_weights_changed"))

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.records: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.kv_cache_bytes = 0
        self.packed_bytes = 0
        for phase, name in self.PHASES:
            setattr(trainer, name, self._wrap(phase, getattr(trainer, name)))
        engine = trainer.engine
        inner = engine.generate

        def generate(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.kv_cache_bytes = max(self.kv_cache_bytes, engine.last_stats.get("kv_cache_bytes", 0))
            packed = getattr(getattr(engine, "_forward", None), "packed", None)
            if packed:
                self.packed_bytes = max(self.packed_bytes, _bytes(packed.values()))
            return out

        engine.generate = generate

    def _wrap(self, phase: str, fn):
        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            with _PeakSampler() as peak:
                out = fn(*args, **kwargs)
            self.current["between_peak_mib"] = max(self.current.get("between_peak_mib", 0.0), peak.before)
            self.current[f"{phase}_s"] = self.current.get(f"{phase}_s", 0.0) + time.perf_counter() - t0
            if peak.peak > self.current.get(f"{phase}_peak_mib", 0.0):
                self.current[f"{phase}_peak_mib"] = peak.peak
                self.current[f"{phase}_heap_free_mib"] = peak.heap_free_at_peak
            return out

        return wrapped

    def step(self) -> dict[str, float]:
        self.current = {}
        t0 = time.perf_counter()
        metrics = self.trainer.step()
        total = time.perf_counter() - t0
        rec = dict(self.current)
        rec["batch_s"] = metrics.get("batch_s", 0.0)
        rec["forward_backward_s"] = metrics.get("forward_backward_s", 0.0)
        rec["optimizer_s"] = metrics.get("optimizer_s", 0.0)
        rec["iteration_s"] = total
        rec["other_s"] = total - sum(rec.get(f"{p}_s", 0.0) for p, _ in self.PHASES) - rec["batch_s"]
        rec["trained_tokens"] = metrics.get("trained_tokens", 0.0)
        rec["batch_tokens"] = metrics.get("batch_tokens", 0.0)
        rec["skipped_steps"] = metrics.get("skipped_steps", 0.0)
        rec["policy_tokens"] = metrics.get("policy_tokens", 0.0)
        rec["train_tokens_per_s"] = metrics.get("train_tokens_per_s", 0.0)
        rec["rollout_tokens_per_s"] = metrics.get("rollout_tokens_per_s", 0.0)
        rec["success_rate"] = metrics.get("success_rate", 0.0)
        # The phases reset the kernel's peak mark: the iteration's peak is the largest of theirs and the gaps'.
        self.current["between_peak_mib"] = max(self.current.get("between_peak_mib", 0.0), _status("VmHWM"))
        rec["between_peak_mib"] = self.current["between_peak_mib"]
        rec["peak_rss_mib"] = max(v for k, v in rec.items() if k.endswith("_peak_mib"))
        self.records.append(rec)
        return rec


def memory_breakdown(trainer, profiler: PhaseProfiler, baseline_mib: float) -> dict[str, float]:
    """MiB of each part at the training peak (see the module docstring)."""
    from agentgym.training.policy import HEAD_CHUNK_TOKENS, activation_bytes_per_token

    model = trainer.model
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    out = {
        "libraries and interpreter (before the model)": baseline_mib,
        "weights": _bytes(params) / MiB,
        "reference model (KL)": _bytes(trainer.ref_model.parameters()) / MiB if trainer.ref_model is not None else 0.0,
        "gradients": _bytes(trainable) / MiB,
        "AdamW moments": _bytes(t for st in trainer.optimizer.state.values() for t in st.values()
                                if hasattr(t, "numel") and t.dim() > 0) / MiB,
        "packed decode weights (generation only)": profiler.packed_bytes / MiB,
        "KV cache, largest generate call (generation only)": profiler.kv_cache_bytes / MiB,
    }
    vocab = model.get_output_embeddings().weight.shape[0]
    out["LM head logits, one chunk (x4: logits, logprobs, exp, grad)"] = 4 * HEAD_CHUNK_TOKENS * vocab * 4 / MiB
    per_token = activation_bytes_per_token(model)
    mb_tokens = getattr(trainer, "_max_micro_tokens", 0)
    if getattr(trainer, "_checkpointing_on", False):
        cfg = model.config
        hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
        out["activations, largest micro-batch (checkpointed)"] = mb_tokens * 4 * hidden * (layers + 14) / MiB
    else:
        out["activations, largest micro-batch (estimate)"] = mb_tokens * per_token / MiB
    peak = max(r["peak_rss_mib"] for r in profiler.records)
    train_peak = max(r.get("update_peak_mib", 0.0) for r in profiler.records)
    counted = sum(v for k, v in out.items() if "generation only" not in k)
    out["allocator slack and the rest (update peak - the above)"] = train_peak - counted
    for phase in ("rollout", "update"):
        at = max(profiler.records, key=lambda r: r.get(f"{phase}_peak_mib", 0.0))
        out[f"of which malloc's free blocks at the {phase} peak"] = at.get(f"{phase}_heap_free_mib", float("nan"))
    out["peak RSS of the process"] = peak
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=("main", "guess", "vs_trl", "spider"), default="main")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--activation-checkpointing", choices=("auto", "on", "off"), default=None)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--always-step", action="store_true",
                   help="update on every minibatch, also without learning signal (like-for-like timing)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch

    from agentgym.training.trainer import Trainer

    baseline = _status("VmRSS")
    overrides = {}
    if args.activation_checkpointing:
        overrides["activation_checkpointing"] = args.activation_checkpointing
    if args.micro_batch_size:
        overrides["micro_batch_size"] = args.micro_batch_size
    run_dir = tempfile.mkdtemp(prefix=f"profile_{args.setting}_")
    cfg = config(args.setting, args.iterations, run_dir, overrides)
    if args.always_step:
        import dataclasses

        cfg = dataclasses.replace(cfg, algo_kwargs={**cfg.algo_kwargs, "skip_without_signal": False})
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    load_s = time.perf_counter() - t0
    profiler = PhaseProfiler(trainer)
    try:
        for i in range(args.iterations):
            rec = profiler.step()
            print(f"iteration {i + 1}: {rec['iteration_s']:.1f} s, peak {rec['peak_rss_mib']:.0f} MiB, "
                  f"train {rec['train_tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
        breakdown = memory_breakdown(trainer, profiler, baseline)
    finally:
        trainer.close()
    recs = profiler.records
    trained = [r for r in recs if r["trained_tokens"] > 0] or recs  # iterations that updated the policy
    med = {k: statistics.median(r.get(k, 0.0) for r in trained) for k in recs[0]}
    fb_tok_s = statistics.median(r["trained_tokens"] / r["forward_backward_s"] for r in trained
                                 if r["forward_backward_s"] > 0) if any(r["forward_backward_s"] for r in trained) else 0
    med["forward_backward_tokens_per_s"] = fb_tok_s
    rows = [("rollout (generation + env)", "rollout"), ("batch building", "batch"),
            ("score (old/ref logprob passes)", "score"), ("update", "update"),
            ("  of which forward+backward", "forward_backward"), ("  of which optimizer steps", "optimizer"),
            ("push weights to the engine", "push"), ("logging and the rest", "other")]
    lines = [f"| phase ({cfg.env}, {cfg.algo}; median of the {len(trained)} of {len(recs)} iterations that trained) "
             "| s | peak RSS in phase, any iteration (MiB) |",
             "|---|---|---|"]
    for label, key in rows:
        peaks = [r[f"{key}_peak_mib"] for r in recs if f"{key}_peak_mib" in r]
        peak = max(peaks) if peaks else None
        lines.append(f"| {label} | {med.get(f'{key}_s', 0.0):.2f} | {'' if peak is None else f'{peak:.0f}'} |")
    lines.append(f"| **iteration** | **{med['iteration_s']:.2f}** | **{max(r['peak_rss_mib'] for r in recs):.0f}** |")
    lines.append("")
    lines.append(f"train tok/s {med['train_tokens_per_s']:.0f} (trained tokens over score+update+push), "
                 f"forward+backward {fb_tok_s:.0f} tok/s, "
                 f"gen tok/s {med['rollout_tokens_per_s']:.0f}, torch threads {torch.get_num_threads()}, "
                 f"activation checkpointing {cfg.activation_checkpointing}, load {load_s:.1f} s")
    lines.append("")
    lines.append("| memory at the training peak | MiB |")
    lines.append("|---|---|")
    for k, v in breakdown.items():
        lines.append(f"| {k} | {v:.0f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out or f"benchmarks/results/trainer_profile_{args.setting}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setting": args.setting, "config": {k: str(v) for k, v in vars(cfg).items()},
                               "iterations": recs, "median": med, "memory_mib": breakdown, "load_s": load_s,
                               "table": table}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
