"""Beyond RL: rejection-sampling SFT and automatic prompt optimization next to GRPO, at the same wall-time budget.

On one env where the base policy is weak, each method starts from the same base model and gets the same wall-time
budget (``--budget-s``; a method stops at the first iteration or round boundary past it):

- ``base``: the policy as it is;
- ``sft``: rejection sampling (``agentgym train --algo sft``): collect, keep the successful episodes, fine-tune;
- ``apo``: prompt optimization (``agentgym train --algo apo``): beam search over the system prompt, the policy
  itself as the critic (or ``--critic``), the weights unchanged;
- ``grpo``: RL (``agentgym train --algo grpo``).

Every policy (with its prompt) is then evaluated on the same held-out tasks (``agentgym eval``'s, one episode per
task, sampling as in training). Writes ``beyond_rl.json`` and ``beyond_rl.md`` into ``--out`` (one row per method:
held-out success, mean ± std over seeds, the 95% interval of the pooled success rate, wall time, iterations).

    python benchmarks/beyond_rl.py                         # tiny random model on GuessNumber 1..3: minutes
    python benchmarks/beyond_rl.py --real-model            # SmolLM2-135M-Instruct on 2-operand addition
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from agentgym.workflow.suite import REAL_ENVS, TINY_ENVS, EnvSetting

METHODS = ("base", "sft", "apo", "grpo")

TINY = dict(
    env=TINY_ENVS["guess3"], model="tiny", budget_s=60.0,
    sft=dict(groups_per_iteration=16, group_size=8, lr=1e-2, epochs=2, micro_batch_size=64),
    grpo=dict(groups_per_iteration=16, group_size=8, lr=3e-3, micro_batch_size=64, algo_kwargs={"kl_coef": 0.0}),
    apo=dict(val_tasks=16, val_samples=2, critique_tasks=8, beam_width=2, num_edits=2, critic_max_new_tokens=48),
)
"""The tiny random model of agentgym.tiny on GuessNumber 1..3 (two guesses, one-token replies)."""

REAL = dict(
    env=REAL_ENVS["add"], model="SmolLM2-135M-Instruct", budget_s=600.0,
    sft=dict(groups_per_iteration=4, group_size=8, lr=1e-5, epochs=1, micro_batch_size=8),
    grpo=dict(groups_per_iteration=4, group_size=8, lr=1e-6, micro_batch_size=8),
    apo=dict(val_tasks=16, val_samples=2, critique_tasks=8, beam_width=2, num_edits=2, critic_max_new_tokens=96),
)
"""The embedded SmolLM2-135M-Instruct on 2-operand addition (one reply, no calculator)."""


@dataclasses.dataclass
class MethodRun:
    """One method on one seed: its held-out result and what it cost."""

    method: str
    seed: int
    success_rate: float
    successes: int
    episodes: int
    reward_mean: float
    wall_s: float
    iterations: int
    """training iterations, or APO rounds"""
    prompt: str | None = None
    """the system prompt evaluated (APO's best; the env's own otherwise)"""
    cpu_s: float = 0.0
    """CPU time of this process during the method (all threads), a check on the wall time of a shared machine"""


def _load(model_name: str, seed: int) -> tuple[Any, Any]:
    from agentgym.models import load_model

    torch.manual_seed(seed)
    return load_model(model_name)


def held_out(model: Any, tok: Any, setting: EnvSetting, prompt: str | None, episodes: int) -> dict[str, Any]:
    """Success of ``model`` with system prompt ``prompt`` on ``episodes`` held-out tasks (the `agentgym eval` seeds)."""
    from agentgym.training.apo import PromptEvaluator
    from agentgym.engines import SamplingParams, TransformersEngine
    from agentgym.rollout.evaluation import EVAL_SEED

    params = SamplingParams(max_new_tokens=setting.max_new_tokens)
    ev = PromptEvaluator(setting.env, dict(setting.env_kwargs), TransformersEngine(model, tok), tok, params,
                         num_tasks=episodes, seed=EVAL_SEED)
    try:
        s = ev(prompt)
    finally:
        ev.close()
    return {"success_rate": s.success_rate, "successes": int(sum(ep.success for ep in s.episodes)),
            "episodes": len(s.episodes), "reward_mean": s.score}


def _train_for(trainer: Any, budget_s: float) -> tuple[int, float]:
    """Step ``trainer`` until ``budget_s`` seconds have passed (at least one iteration)."""
    t0 = time.perf_counter()
    steps = 0
    while steps == 0 or time.perf_counter() - t0 < budget_s:
        trainer.step()
        steps += 1
    return steps, time.perf_counter() - t0


def run_method(method: str, plan: dict[str, Any], seed: int, budget_s: float, episodes: int, out: Path,
               critic: str) -> MethodRun:
    """Run one method from the base model and evaluate it on the held-out tasks."""
    from agentgym.training.apo import APOConfig, env_system_prompt, optimize_prompt

    setting: EnvSetting = plan["env"]
    model, tok = _load(plan["model"], seed)
    prompt = env_system_prompt(setting.env, tok, dict(setting.env_kwargs))
    run_dir = out / "runs" / f"{method}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    common = dict(env=setting.env, env_kwargs=dict(setting.env_kwargs), model=plan["model"], seed=seed,
                  max_new_tokens=setting.max_new_tokens, run_dir=str(run_dir), wandb=False)
    steps, wall = 0, 0.0
    cpu0 = time.process_time()
    if method == "sft":
        from agentgym.training.sft import SFTConfig, SFTTrainer

        trainer = SFTTrainer(SFTConfig(**common, **plan["sft"], progress=False, export=False, save_episodes=0),
                             model=model, tokenizer=tok)
        try:
            steps, wall = _train_for(trainer, budget_s)
        finally:
            trainer.close()
    elif method == "grpo":
        from agentgym.training.trainer import Trainer
        from agentgym.training.train_config import TrainConfig

        trainer = Trainer(TrainConfig(**common, algo="grpo", **plan["grpo"], progress=False, export=False,
                                      save_episodes=0), model=model, tokenizer=tok)
        try:
            steps, wall = _train_for(trainer, budget_s)
        finally:
            trainer.close()
    elif method == "apo":
        cfg = APOConfig(**common, **plan["apo"], rounds=1_000, max_seconds=budget_s, critic=critic)
        result = optimize_prompt(cfg, model=model, tokenizer=tok)
        steps, wall, prompt = result.rounds, result.wall_s, result.best.prompt
    elif method != "base":
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    cpu = time.process_time() - cpu0
    res = held_out(model, tok, setting, prompt, episodes)
    return MethodRun(method, seed, res["success_rate"], res["successes"], res["episodes"], res["reward_mean"], wall,
                     steps, prompt, cpu)


def summarize(runs: Sequence[MethodRun]) -> list[dict[str, Any]]:
    """Per method: held-out success (mean ± std over seeds, Wilson 95% interval of the pooled rate), wall time."""
    from agentgym.rollout.evaluation import wilson_interval

    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        members = [r for r in runs if r.method == method]
        rates = [r.success_rate for r in members]
        mean = sum(rates) / len(rates)
        std = math.sqrt(sum((x - mean) ** 2 for x in rates) / len(rates))
        wins, n = sum(r.successes for r in members), sum(r.episodes for r in members)
        rows.append({"method": method, "seeds": len(members), "success_mean": mean, "success_std": std,
                     "success_ci95": wilson_interval(wins, n), "reward_mean": sum(r.reward_mean for r in members)
                     / len(members), "wall_s_mean": sum(r.wall_s for r in members) / len(members),
                     "cpu_s_mean": sum(r.cpu_s for r in members) / len(members),
                     "iterations_mean": sum(r.iterations for r in members) / len(members)})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    header = "| method | seeds | held-out success | 95% CI (pooled) | reward | wall s | CPU s | iterations |"
    lines = [f"**{title}**", "", header,
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["success_ci95"]
        lines.append(f"| {r['method']} | {r['seeds']} | {r['success_mean']:.3f} ± {r['success_std']:.3f} | "
                     f"{lo:.2f}-{hi:.2f} | {r['reward_mean']:.3f} | {r['wall_s_mean']:.0f} | {r['cpu_s_mean']:.0f} | "
                     f"{r['iterations_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real-model", action="store_true",
                   help="SmolLM2-135M-Instruct on 2-operand addition (default: the tiny model on GuessNumber 1..3)")
    p.add_argument("--env", default=None, choices=sorted({*TINY_ENVS, *REAL_ENVS}),
                   help="the env setting (default: guess3 with the tiny model, add with --real-model)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-time budget per method and seed (default: 60 tiny, 600 real)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per method (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=128, help="held-out tasks per evaluation (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of %(default)s")
    p.add_argument("--critic", default="",
                   help="APO's critic: empty for the policy itself, a model name/dir, or an OpenAI-compatible URL")
    p.add_argument("--out", default="benchmarks/results", help="output directory (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = dict(REAL if args.real_model else TINY)
    if args.env:
        plan["env"] = {**TINY_ENVS, **REAL_ENVS}[args.env]
    budget = args.budget_s if args.budget_s is not None else plan["budget_s"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"beyond_rl: unknown methods {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting: EnvSetting = plan["env"]
    title = (f"{plan['model']} on {setting.env} {json.dumps(setting.env_kwargs)}: {budget:.0f} s per method, "
             f"{args.episodes} held-out tasks, {args.seeds} seed(s)")
    runs: list[MethodRun] = []
    name = "beyond_rl_real" if args.real_model else "beyond_rl"
    if args.env:
        name += f"_{args.env}"
    for seed in range(args.seeds):
        for method in methods:
            print(f"{method} seed {seed} ...", flush=True)
            run = run_method(method, plan, seed, budget, args.episodes, out / name, args.critic)
            runs.append(run)
            print(f"    held-out success {run.success_rate:.3f} ({run.iterations} iterations, {run.wall_s:.0f} s)",
                  flush=True)
            rows = summarize(runs)
            settings = {"model": plan["model"], "env": dataclasses.asdict(setting), "budget_s": budget,
                        "episodes": args.episodes, "seeds": args.seeds, "critic": args.critic or "the policy",
                        **{k: plan[k] for k in ("sft", "grpo", "apo")}, "torch_threads": torch.get_num_threads()}
            (out / f"{name}.json").write_text(json.dumps(
                {"settings": settings, "summary": rows, "runs": [dataclasses.asdict(r) for r in runs]},
                indent=2, default=str))
            (out / f"{name}.md").write_text(markdown_table(rows, title))
    print(markdown_table(summarize(runs), title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
