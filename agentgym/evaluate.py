"""Evaluate a policy: ``agentgym eval --model PATH --env ID`` reports its success rate on an env.

The policy may be a run directory (its exported ``model/``, else its latest checkpoint), a checkpoint directory, a
Hugging Face model directory, or a model name (``SmolLM2-135M-Instruct``, ``tiny``, a hub id). Given a run
directory, the env, its arguments and the sampling settings default to the run's own.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agentgym.models import is_hf_model_dir

EVAL_SEED = 10_000_019
"""Default seed of the first evaluation task (the same held-out tasks as :meth:`agentgym.trainer.Trainer.evaluate`)."""


@dataclass
class EvalResult:
    """What an evaluation measured."""

    success_rate: float
    success_ci95: tuple[float, float]
    """Wilson 95% interval of the success rate"""
    reward_mean: float
    reward_std: float
    turns_mean: float
    episode_tokens_mean: float
    truncated_rate: float
    episodes: int
    wall_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    """model, env, env_kwargs, sampling and seed"""
    by_difficulty: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{level: {"count", "accuracy"}}`` (then ``"all"``): the env's "by difficulty" report, when it has one"""
    reports: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """the env's own tables (its ``eval_report(task_records)``), e.g. SpiderSQL's "by difficulty" and "by turn":
    ``{title: {row: {"count", "accuracy"}}}``"""
    unplayed: list[dict[str, Any]] = field(default_factory=list)
    """tasks whose episode ended before the policy's first turn (counted as failures), with their reset info"""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _load_from_checkpoint(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    from agentgym.checkpoint import load_checkpoint, resolve_checkpoint
    from agentgym.models import DEFAULT_MODEL, load_model

    ckpt = resolve_checkpoint(path)
    conf = json.loads((ckpt / "state.json").read_text()).get("config", {})
    model, tok = load_model(conf.get("model") or DEFAULT_MODEL)
    lora = int(conf.get("lora_rank") or 0)
    if lora > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora, lora_alpha=int(conf.get("lora_alpha", 32)),
                                                 target_modules="all-linear"))
    load_checkpoint(ckpt, {"model": model})
    if lora > 0:
        model = model.merge_and_unload()
    return model.eval(), tok, conf


def load_policy(path: str) -> tuple[Any, Any, dict[str, Any]]:
    """Load a policy and its tokenizer; returns ``(model, tokenizer, run_config)``.

    ``run_config`` is the training config of the run or checkpoint it came from (empty for a plain model).
    """
    from agentgym.models import load_model

    p = Path(path).expanduser()
    if p.is_dir() and not is_hf_model_dir(p):
        conf: dict[str, Any] = {}
        if (p / "config.json").is_file():
            conf = json.loads((p / "config.json").read_text())
        if is_hf_model_dir(p / "model"):  # a run directory with an exported policy
            model, tok = load_model(str(p / "model"))
            return model, tok, conf
        if (p / "state.json").is_file() or (p / "latest").is_file() or (p / "checkpoints").is_dir():
            return _load_from_checkpoint(p)
        raise FileNotFoundError(
            f"{p} holds no model: expected a run directory (with model/ or checkpoints/), a checkpoint directory, "
            f"or a Hugging Face model directory (config.json and weights)"
        )
    model, tok = load_model(str(path) if p.exists() else path)
    return model, tok, {}


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    env: str,
    env_kwargs: dict[str, Any] | None = None,
    episodes: int | None = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 32,
    max_context_tokens: int = 2048,
    seed: int = EVAL_SEED,
    batch_size: int = 32,
    engine: Any = None,
) -> tuple[EvalResult, list[Any]]:
    """Play ``episodes`` episodes, one per task (env reset seeds ``seed``, ``seed + 1``, ...), ``batch_size`` at a
    time; returns the result and the :class:`~agentgym.batch.Episode` list.

    An env that serves a finite task set (it has ``num_tasks`` and a ``task_order`` option, as SpiderSQL does) is
    switched to ``task_order="by_seed"`` unless the caller chose an order, so consecutive seeds visit every task once;
    ``episodes=None`` then plays each task once (otherwise ``None`` means 64).
    """
    import agentgym
    from agentgym.collector import Collector
    from agentgym.engines import SamplingParams, TransformersEngine

    env_kwargs = dict(env_kwargs or {})

    def make_env():
        return agentgym.make(env, tokenizer=tokenizer, max_context_tokens=max_context_tokens, **env_kwargs)

    num_tasks, eval_report = _probe(make_env, env_kwargs)
    if episodes is None:
        episodes = num_tasks or 64
    if episodes < 1 or batch_size < 1:
        raise ValueError(f"episodes and batch_size must be >= 1, got {episodes} and {batch_size}")
    engine = engine if engine is not None else TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens)

    t0 = time.perf_counter()
    collected: list[Any] = []
    unplayed: list[dict[str, Any]] = []
    collectors: dict[int, Collector] = {}
    try:
        done = 0
        while done < episodes:
            n = min(batch_size, episodes - done)
            if n not in collectors:
                collectors[n] = Collector(make_env, engine, params, num_groups=n, group_size=1)
            collected += collectors[n].collect(seed + done)
            unplayed += collectors[n].last_unplayed
            done += n
    finally:
        for c in collectors.values():
            c.close()
    wall = time.perf_counter() - t0
    total = len(collected) + len(unplayed)
    returns = np.array([ep.total_reward for ep in collected] + [0.0] * len(unplayed), dtype=np.float64)
    wins = int(sum(ep.success for ep in collected))
    records = task_records(collected, unplayed)
    reports = eval_report(records) if eval_report is not None else {}
    result = EvalResult(
        success_rate=wins / total,
        success_ci95=wilson_interval(wins, total),
        reward_mean=float(returns.mean()),
        reward_std=float(returns.std()),
        turns_mean=float(np.mean([len(ep.turns) for ep in collected] + [0] * len(unplayed))),
        episode_tokens_mean=float(np.mean([sum(len(t.action_ids) for t in ep.turns) for ep in collected]
                                          + [0] * len(unplayed))),
        truncated_rate=float(np.mean([ep.truncated for ep in collected] + [True] * len(unplayed))),
        episodes=total,
        wall_s=wall,
        settings=dict(env=env, env_kwargs=env_kwargs, temperature=temperature, top_p=top_p, top_k=top_k,
                      max_new_tokens=max_new_tokens, max_context_tokens=max_context_tokens, seed=seed),
        by_difficulty=reports.get("by difficulty", {}),
        reports=reports,
        unplayed=unplayed,
    )
    return result, collected


def _probe(make_env: Any, env_kwargs: dict[str, Any]) -> tuple[int | None, Any]:
    """What the env says about evaluating it: the number of tasks of an env that serves a finite task set (setting
    ``task_order="by_seed"`` in ``env_kwargs`` unless given), else ``None``; and its ``eval_report`` (a function of
    the task records returning its own tables), else ``None``. Both are looked up through the env's wrappers."""
    probe = make_env()
    try:
        num_tasks, report, inner = None, None, probe
        while inner is not None:
            report = report or getattr(inner, "eval_report", None)
            if num_tasks is None and hasattr(inner, "num_tasks") and hasattr(inner, "task_order"):
                env_kwargs.setdefault("task_order", "by_seed")
                num_tasks = int(inner.num_tasks) if env_kwargs["task_order"] == "by_seed" else 0
            inner = getattr(inner, "env", None)
        return (num_tasks or None), report
    finally:
        probe.close()


def format_table(title: str, table: dict[str, dict[str, float]]) -> str:
    """One of an env's report tables (``{row: {"count", "accuracy"}}``) as text."""
    width = max([len(title), *(len(k) for k in table)])
    lines = [f"{title:<{width}} {'count':>6} {'accuracy':>9}"]
    for row, v in table.items():
        lines.append(f"{row:<{width}} {int(v['count']):>6} {v['accuracy']:>9.3f}")
    return "\n".join(lines)


def task_records(episodes: Sequence[Any], unplayed: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One JSON-able line per task, in seed order: seed, success, return, turns, truncated and the env's scalar info
    (for SpiderSQL: difficulty, db_id, example_index, final_query, gold_query, match_reason)."""
    from agentgym.batch import scalar_info

    rows = []
    for ep in episodes:
        info = {k: v for k, v in scalar_info(ep.info).items() if k not in ("text", "success")}
        rows.append({"seed": ep.group_id, "success": bool(ep.success), "return": float(ep.total_reward),
                     "turns": len(ep.turns), "truncated": bool(ep.truncated), **info})
    for u in unplayed:
        rows.append({"success": False, "return": 0.0, "turns": 0, "truncated": True, **u})
    return sorted(rows, key=lambda r: r["seed"])


# -- command --------------------------------------------------------------------------------------------------------
_FROM_RUN = ("env", "temperature", "top_p", "top_k", "max_new_tokens", "max_context_tokens")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentgym eval",
        description="Success rate of a policy on an env, one episode per task. Env arguments: --env.KEY VALUE "
        "(e.g. --env.high 10). Settings not given default to those of the run the policy came from, else to "
        "the values below.",
    )
    p.add_argument("--model", required=True,
                   help="a run directory, a checkpoint, a Hugging Face model directory, or a model name "
                   "(SmolLM2-135M-Instruct, tiny, a hub id)")
    p.add_argument("--env", default=None,
                   help="registered env id, see `agentgym envs` (default: the run's env, else agentgym/GuessNumber-v0)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes to play, one task each (default: every task once for an env with a finite task "
                   "set, such as SpiderSQL's questions; else 64)")
    p.add_argument("--split", default=None,
                   help="the env's data split, e.g. dev for SpiderSQL (short for --env.split; default: the env's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 for greedy (default: the run's, else 1.0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default: the run's, else 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 disables (default: the run's, else 0)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens the policy may generate per turn (default: the run's, else 32)")
    p.add_argument("--max-context-tokens", type=int, default=None,
                   help="longest context an episode may reach (default: the run's, else 2048)")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help="reset seed of the first task; task i uses SEED + i (default: %(default)s, held-out tasks)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes played at once (default: %(default)s)")
    p.add_argument("--out-dir", default=None,
                   help="write eval.json, results.jsonl (one line per task) and episodes.jsonl (for `agentgym "
                   "inspect`) here (default: runs/eval/<env>-<time>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: a summary)")
    return p


_DEFAULTS = {"env": "agentgym/GuessNumber-v0", "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 32,
             "max_context_tokens": 2048}


def _split_env_kwargs(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Take ``--env.KEY VALUE`` / ``--env.KEY=VALUE`` (or ``--env_kwargs.KEY``) out of argv."""
    import yaml

    rest, kwargs = [], {}
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(("--env.", "--env_kwargs.")):
            key, eq, value = a.split(".", 1)[1].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{a} needs a value")
                i += 1
                value = args[i]
            kwargs[key] = yaml.safe_load(value)
        else:
            rest.append(a)
        i += 1
    return rest, kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym eval``."""
    prog = "agentgym eval"
    try:
        rest, env_kwargs = _split_env_kwargs(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(rest)
    try:
        model, tok, run_conf = load_policy(args.model)
    except (FileNotFoundError, OSError, KeyError, ValueError) as e:
        print(f"{prog}: error: could not load the policy {args.model!r}: {e}", file=sys.stderr)
        return 2
    settings = {}
    for key in _FROM_RUN:
        given = getattr(args, key)
        settings[key] = given if given is not None else run_conf.get(key, _DEFAULTS[key])
    kwargs = dict(run_conf.get("env_kwargs") or {}) if settings["env"] == run_conf.get("env") else {}
    kwargs.update(env_kwargs)
    if args.split is not None:
        kwargs["split"] = args.split
    import agentgym

    if settings["env"] not in agentgym.registry:
        from agentgym.registration import load_plugins

        load_plugins()
    if settings["env"] not in agentgym.registry:
        import difflib

        close = difflib.get_close_matches(settings["env"], list(agentgym.registry), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else " See `agentgym envs`."
        print(f"{prog}: error: unknown env {settings['env']!r}.{hint}", file=sys.stderr)
        return 2
    try:
        result, episodes = evaluate_policy(
            model, tok, settings["env"], kwargs, episodes=args.episodes, temperature=settings["temperature"],
            top_p=settings["top_p"], top_k=settings["top_k"], max_new_tokens=settings["max_new_tokens"],
            max_context_tokens=settings["max_context_tokens"], seed=args.seed, batch_size=args.batch_size,
        )
    except (TypeError, ValueError) as e:  # bad env arguments surface here
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    result.settings["model"] = args.model
    result.settings["tokenizer"] = _tokenizer_source(args.model, run_conf)
    record = asdict(result)
    from agentgym.batch import episode_record

    out = Path(args.out_dir or Path("runs") / "eval" / f"{settings['env'].split('/')[-1]}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(record, indent=2))
    with (out / "results.jsonl").open("w") as f:
        for row in task_records(episodes, result.unplayed):
            f.write(json.dumps(row) + "\n")
    with (out / "episodes.jsonl").open("w") as f:
        for ep in episodes:
            f.write(json.dumps(episode_record(ep, 0)) + "\n")
    if args.json:
        print(json.dumps(record))
    else:
        lo, hi = result.success_ci95
        print(f"model     {result.settings['model']}\nenv       {settings['env']} {json.dumps(kwargs)}")
        print(f"episodes  {result.episodes}  (temperature {settings['temperature']}, seed {args.seed})")
        print(f"success   {result.success_rate:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
        print(f"reward    {result.reward_mean:.3f} ± {result.reward_std:.3f}")
        print(f"turns     {result.turns_mean:.2f}   tokens/episode {result.episode_tokens_mean:.1f}   "
              f"truncated {result.truncated_rate:.3f}")
        print(f"time      {result.wall_s:.1f} s")
        if result.unplayed:
            print(f"unplayed  {len(result.unplayed)} tasks ended before the policy's first turn (counted as failures)")
        for title, table in result.reports.items():
            print("\n" + format_table(title, table))
        if result.reports:
            print()
        print(f"wrote {out / 'eval.json'}, results.jsonl and episodes.jsonl (agentgym inspect {out})")
    return 0


def _tokenizer_source(path: str, run_conf: dict[str, Any]) -> str:
    """Where `agentgym inspect` can load the policy's tokenizer from: a run's exported model/, else the model the
    run or checkpoint was trained from, else what was given."""
    p = Path(path)
    if p.is_dir() and is_hf_model_dir(p / "model"):
        return str(p / "model")
    return str(run_conf.get("model") or path) if run_conf else path
