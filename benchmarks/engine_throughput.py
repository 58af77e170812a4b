"""Engine throughput: agentgym's TransformersEngine vs plain ``model.generate``, and multi-turn KV reuse.

Run: ``python benchmarks/engine_throughput.py`` (SmolLM2-135M-Instruct fp32 by default, fetched and converted on
first use). Prints a table and writes ``benchmarks/results/engine_throughput.json``.

1. Throughput: generated tokens per second for batches of 1, 8 and 32 random 128-token prompts, 128 new tokens
   each (sampling at temperature 1, end-of-sequence ignored so every row generates all its tokens), ours and
   ``model.generate`` side by side in one process, alternating, best of ``--repeats``. The time includes prefill.
   With ``--vllm``, vLLM's engine (:class:`~agentgym.engines.VLLMEngine`, float32) is timed on the same prompts in
   the same process (run it where vllm is installed: the venv ``.ci/vllm`` builds has vLLM's CPU build).
2. Multi-turn: a batch of episodes, each turn generating ``--turn-tokens`` tokens and appending a
   ``--obs-tokens``-token observation; seconds per turn by turn index, with the episode's keys/values kept between
   turns (``cache_keys``) and without (the whole context prefilled every turn).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from agentgym.engines import Engine, SamplingParams, TransformersEngine
from agentgym.models import DEFAULT_MODEL, load_model


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Stay clear of the special tokens at the start of the vocabulary.
    return torch.randint(100, vocab, (batch, length), generator=g).tolist()


def bench_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``model.generate`` to sample ``new_tokens`` for every prompt (EOS ignored)."""
    ids = torch.tensor(prompts)
    torch.manual_seed(0)
    cpu = time.process_time()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad_id,
        )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.shape[1] == ids.shape[1] + new_tokens
    return elapsed, cpu


def bench_engine(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """Wall and CPU seconds for the engine to sample ``new_tokens`` for every prompt (no stop tokens)."""
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, stop_token_ids=[], seed=0)
    cpu = time.process_time()
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert all(len(c[0].token_ids) == new_tokens for c in out)
    return elapsed, cpu


def bench_multiturn(
    engine: Engine, batch: int, prompt_len: int, turns: int, turn_tokens: int, obs_tokens: int,
    vocab: int, reuse: bool,
) -> list[dict]:
    """Per-turn seconds and context lengths of a batch of synthetic episodes."""
    contexts = _prompts(batch, prompt_len, vocab, seed=1)
    keys = [f"episode-{i}" for i in range(batch)] if reuse else None
    params = SamplingParams(temperature=1.0, max_new_tokens=turn_tokens, stop_token_ids=[], seed=0)
    rows = []
    for turn in range(turns):
        start = time.perf_counter()
        out = engine.generate(contexts, params, cache_keys=keys)
        elapsed = time.perf_counter() - start
        rows.append({
            "turn": turn,
            "context_tokens": len(contexts[0]),
            "seconds": elapsed,
            "prefill_tokens": engine.last_stats["prefill_tokens"],
            "reused_tokens": engine.last_stats["reused_tokens"],
        })
        observations = _prompts(batch, obs_tokens, vocab, seed=100 + turn)
        contexts = [c + o[0].token_ids + obs for c, o, obs in zip(contexts, out, observations)]
    if keys:
        for k in keys:
            engine.release(k)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name or directory (default: %(default)s)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per cell; the best is reported")
    ap.add_argument("--skip-generate", action="store_true", help="time only the engine")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--turn-batch", type=int, default=8)
    ap.add_argument("--turn-tokens", type=int, default=32)
    ap.add_argument("--obs-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--vllm", action="store_true", help="also time VLLMEngine on the same prompts (needs vllm)")
    ap.add_argument("--out", default="benchmarks/results/engine_throughput.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    model, tokenizer = load_model(args.model)
    engine = TransformersEngine(model, tokenizer, seed=0)
    vocab = model.get_input_embeddings().weight.shape[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # Warm up both paths (first calls allocate and pick kernels).
    warm = _prompts(2, 16, vocab, seed=2)
    bench_engine(engine, warm, 4)
    if not args.skip_generate:
        bench_generate(model, warm, 4, pad_id)

    throughput = []
    for batch in args.batch_sizes:
        prompts = _prompts(batch, args.prompt_len, vocab, seed=0)
        ours, ref = [], []
        for _ in range(args.repeats):
            if not args.skip_generate:
                ref.append(bench_generate(model, prompts, args.new_tokens, pad_id))
            ours.append(bench_engine(engine, prompts, args.new_tokens))
        tokens = batch * args.new_tokens
        best, best_ref = min(ours), min(ref) if ref else None
        row = {"batch": batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "agentgym_s": best[0], "agentgym_cpu_s": best[1], "agentgym_tok_s": tokens / best[0]}
        if best_ref:
            row.update({"generate_s": best_ref[0], "generate_cpu_s": best_ref[1],
                        "generate_tok_s": tokens / best_ref[0], "speedup": best_ref[0] / best[0]})
        throughput.append(row)
        print(json.dumps(row), flush=True)

    multiturn = {}
    for reuse in (True, False):
        multiturn["reuse" if reuse else "no_reuse"] = bench_multiturn(
            engine, args.turn_batch, args.prompt_len, args.turns, args.turn_tokens, args.obs_tokens, vocab, reuse
        )
    vllm_engine = None
    if args.vllm:
        # Started only now: its idle threads would slow the engine above down, sharing the process.
        from agentgym.engines import VLLMEngine

        start = time.perf_counter()
        vllm_engine = VLLMEngine.from_model(model, tokenizer, seed=0)
        vllm_start_s = time.perf_counter() - start
        bench_engine(vllm_engine, warm, 4)
        for row in throughput:
            prompts = _prompts(row["batch"], args.prompt_len, vocab, seed=0)
            wall, cpu = min(bench_engine(vllm_engine, prompts, args.new_tokens) for _ in range(args.repeats))
            row.update({"vllm_s": wall, "vllm_cpu_s": cpu, "vllm_tok_s": row["batch"] * args.new_tokens / wall})
            print(json.dumps(row), flush=True)
        multiturn["vllm"] = bench_multiturn(  # vLLM's prefix caching is always on
            vllm_engine, args.turn_batch, args.prompt_len, args.turns, args.turn_tokens, args.obs_tokens, vocab, True
        )

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print(f"load average at start {load_start}")
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}")
    print()
    print("| batch | prompt | new | agentgym tok/s | model.generate tok/s | speedup | CPU s (ours / generate) "
          "| vLLM tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in throughput:
        ref = f"{r['generate_tok_s']:.1f}" if "generate_tok_s" in r else "-"
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        cpu = f"{r['agentgym_cpu_s']:.1f} / {r['generate_cpu_s']:.1f}" if "generate_cpu_s" in r else "-"
        other = f"{r['vllm_tok_s']:.1f}" if "vllm_tok_s" in r else "-"
        print(f"| {r['batch']} | {r['prompt_len']} | {r['new_tokens']} | {r['agentgym_tok_s']:.1f} | {ref} | {speed} "
              f"| {cpu} | {other} |")
    print()
    print(f"Multi-turn: {args.turn_batch} episodes, {args.turn_tokens} tokens a turn, {args.obs_tokens}-token "
          "observations; seconds per turn")
    print("| turn | context tokens | with reuse (s) | prefilled | without reuse (s) | prefilled |")
    print("|---|---|---|---|---|---|")
    for a, b in zip(multiturn["reuse"], multiturn["no_reuse"]):
        print(f"| {a['turn']} | {a['context_tokens']} | {a['seconds']:.2f} | {a['prefill_tokens']} | "
              f"{b['seconds']:.2f} | {b['prefill_tokens']} |")
    if "vllm" in multiturn:
        print("vLLM (prefix caching): " + ", ".join(
            f"turn {r['turn']} {r['seconds']:.2f} s ({r['prefill_tokens']} prefilled)" for r in multiturn["vllm"]))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_start": load_start,
        "load_average_end": load,
        "fast_forward": engine.uses_fast_forward,
        "vllm": _vllm_version() if vllm_engine is not None else None,
        "vllm_start_s": vllm_start_s if vllm_engine is not None else None,
        "throughput": throughput,
        "multiturn": multiturn,
    }, indent=2))
    print(f"\nwrote {out}")


def _vllm_version() -> str:
    import importlib.metadata

    for name in importlib.metadata.packages_distributions().get("vllm", []):
        return f"{name} {importlib.metadata.version(name)}"
    return "?"


if __name__ == "__main__":
    main()
