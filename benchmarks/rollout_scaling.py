"""Rollout throughput with 1, 2 and 4 Ray rollout workers on this machine, next to the in-process collector.

Setting: a tiny random Llama (``agentgym.tiny``, ``--hidden``/``--layers``) on GuessNumber (1..3, two turns, no
system prompt); one collection = ``--groups`` groups x ``--group_size`` episodes of at most ``--max_new_tokens``
tokens per turn. For each worker count the script starts a :class:`~agentgym.rollout.ray_workers.RayCollector` on a local
Ray cluster with all of this machine's CPUs (each worker reserves CPUs / workers, one torch thread), runs one
warm-up collection, then ``--repeats`` timed ones, and reports the median episodes/s. It also times what bounds a
training iteration besides rollouts: the weight broadcast (``ray.put`` once + every worker loading it) and one
trainer update on a collection's batch. The in-process collector and the update use ``--threads`` torch threads
(default 1, like each worker: on a busy machine two threads per process can be many times slower than one).

    python benchmarks/rollout_scaling.py --workers 1 2 4

Prints a table and writes ``benchmarks/results/rollout_scaling.json`` (``--out``). docs/scaling.md discusses the
numbers and projects them to larger clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ENV = "agentgym/GuessNumber-v0"
ENV_KWARGS = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}


def _policy(args):
    from agentgym.tiny import make_tiny_policy

    return make_tiny_policy(seed=0, hidden_size=args.hidden, num_layers=args.layers)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def in_process(args) -> dict:
    """The single-process baseline: the trainer's own Collector and engine in this process."""
    import agentgym
    from agentgym.rollout.collector import Collector
    from agentgym.engines import SamplingParams, TransformersEngine

    torch.set_num_threads(args.threads)
    model, tok = _policy(args)
    collector = Collector(lambda: agentgym.make(ENV, tokenizer=tok, **ENV_KWARGS), TransformersEngine(model, tok),
                          SamplingParams(max_new_tokens=args.max_new_tokens), args.groups, args.group_size)
    collector.collect(0)
    times, episodes = [], 0
    for r in range(args.repeats):
        t0 = time.perf_counter()
        eps = collector.collect(1000 * (r + 1))
        times.append(time.perf_counter() - t0)
        episodes = len(eps)
    collector.close()
    return {"workers": 0, "episodes": episodes, "collect_s": statistics.median(times),
            "episodes_per_s": episodes / statistics.median(times)}


def with_ray(args, workers: int) -> dict:
    import ray

    from agentgym.models import policy_spec
    from agentgym.engines import SamplingParams
    from agentgym.rollout.ray_workers import RayCollector, WorkerConfig

    model, tok = _policy(args)
    config = WorkerConfig(env=ENV, policy=policy_spec(model, tok), env_kwargs=ENV_KWARGS,
                          params=SamplingParams(max_new_tokens=args.max_new_tokens), group_size=args.group_size)
    t0 = time.perf_counter()
    rc = RayCollector(config, num_workers=workers, num_groups=args.groups, weights=_state(model))
    rc.worker_pids()
    startup = time.perf_counter() - t0
    try:
        rc.collect(0)
        times, episodes = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            episodes = rc.collect(1000 * (r + 1))
            times.append(time.perf_counter() - t0)
        # Broadcast: one ray.put, every worker loads it; timed until all have (a call queued behind the load).
        state = _state(model)
        t0 = time.perf_counter()
        rc.load_weights(state)
        ray.get([w.pid.remote() for w in rc.workers])
        broadcast = time.perf_counter() - t0
    finally:
        rc.close()
    med = statistics.median(times)
    return {"workers": workers, "episodes": len(episodes), "collect_s": med, "episodes_per_s": len(episodes) / med,
            "startup_s": startup, "broadcast_s": broadcast,
            "policy_tokens": sum(len(t.action_ids) for ep in episodes for t in ep.turns),
            "weights_mb": sum(v.numel() * v.element_size() for v in state.values()) / 2**20}


def trainer_update(args) -> float:
    """Seconds of one trainer iteration's scoring and update on a collection-sized batch (this process)."""
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    torch.set_num_threads(args.threads)
    model, tok = _policy(args)
    cfg = TrainConfig(env=ENV, env_kwargs=ENV_KWARGS, algo="grpo", iterations=1, groups_per_iteration=args.groups,
                      group_size=args.group_size, max_new_tokens=args.max_new_tokens, micro_batch_size=32,
                      wandb=False, progress=False, export=False, save_episodes=0)
    trainer = Trainer(cfg, model, tok)
    metrics = trainer.step()
    trainer.close()
    return float(metrics["train_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="rollout worker counts")
    ap.add_argument("--groups", type=int, default=16, help="groups (tasks) per collection")
    ap.add_argument("--group_size", type=int, default=4, help="episodes per group")
    ap.add_argument("--max_new_tokens", type=int, default=8, help="tokens per turn")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny Llama")
    ap.add_argument("--layers", type=int, default=2, help="layers of the tiny Llama")
    ap.add_argument("--repeats", type=int, default=3, help="timed collections per setting (median reported)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the in-process collector and of the trainer update (Ray workers use 1)")
    ap.add_argument("--out", default="benchmarks/results/rollout_scaling.json")
    args = ap.parse_args(argv)

    import ray

    rows = [in_process(args)]
    print(json.dumps(rows[-1]), flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        for n in args.workers:
            rows.append(with_ray(args, n))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    train_s = trainer_update(args)

    base = next(r for r in rows if r["workers"] == min(args.workers))
    print(f"\n{args.groups} groups x {args.group_size} episodes, <= {args.max_new_tokens} tokens/turn, "
          f"tiny Llama {args.hidden}x{args.layers}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| rollout workers | episodes/s | collection (s) | speed-up vs 1 worker | broadcast (s) | start-up (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "in-process" if r["workers"] == 0 else str(r["workers"])
        speed = "-" if r["workers"] == 0 else f"{r['episodes_per_s'] / base['episodes_per_s']:.2f}x"
        print(f"| {name} | {r['episodes_per_s']:.1f} | {r['collect_s']:.2f} | {speed} | "
              f"{r.get('broadcast_s', 0):.3f} | {r.get('startup_s', 0):.1f} |")
    print(f"\ntrainer scoring + update of one collection: {train_s:.2f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "setting": {k: v for k, v in vars(args).items() if k != "out"} | {"env": ENV, "env_kwargs": ENV_KWARGS},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "ray": ray.__version__, "load_average_at_end": os.getloadavg()},
        "rows": rows,
        "trainer_update_s": train_s,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
