"""Evaluate a policy: ``agentgym eval --model PATH --env ID`` reports its success rate on an env.

The policy may be a run directory (its exported ``model/``, else its latest checkpoint), a checkpoint directory, a
Hugging Face model directory, or a model name (``SmolLM2-135M-Instruct``, ``tiny``, a hub id). Given a run
directory, the env, its arguments and the sampling settings default to the run's own.
"""

from __future__ import annotations

import argparse

from agentgym.options import ArgumentParser
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from agentgym.models import is_hf_model_dir
from agentgym.rollout.evaluation import EVAL_SEED, evaluate_policy, task_records

def _load_from_checkpoint(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    from agentgym.training.checkpoint import load_checkpoint, resolve_checkpoint
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


def format_table(title: str, table: dict[str, dict[str, float]]) -> str:
    """One of an env's report tables (``{row: {"count", "accuracy"}}``) as text."""
    width = max([len(title), *(len(k) for k in table)])
    lines = [f"{title:<{width}} {'count':>6} {'accuracy':>9}"]
    for row, v in table.items():
        lines.append(f"{row:<{width}} {int(v['count']):>6} {v['accuracy']:>9.3f}")
    return "\n".join(lines)


# -- command --------------------------------------------------------------------------------------------------------
_FROM_RUN = ("env", "temperature", "top_p", "top_k", "max_new_tokens", "max_context_tokens")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
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
    """Take ``--env.KEY VALUE`` / ``--env.KEY=VALUE`` (or ``--env_kwargs.KEY``, ``--env-kwargs.KEY``) out of argv."""
    import yaml

    rest, kwargs = [], {}
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(("--env.", "--env_kwargs.", "--env-kwargs.")):
            key, eq, value = a.split(".", 1)[1].partition("=")
            key = key.replace("-", "_")  # --env.max-turns is --env.max_turns, as in agentgym train
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
    except (TypeError, ValueError, FileNotFoundError) as e:  # bad env arguments (a missing data_dir) surface here
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    result.settings["model"] = args.model
    result.settings["tokenizer"] = _tokenizer_source(args.model, run_conf)
    record = asdict(result)
    from agentgym.rollout.batch import episode_record

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
