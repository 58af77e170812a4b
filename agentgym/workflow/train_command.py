"""The ``agentgym train`` command: parse the run's config, train, print what the run did.

``--algo sft`` and ``--algo apo`` run their own loops (:mod:`agentgym.training.sft`,
:mod:`agentgym.training.apo`); every other algorithm runs through :class:`~agentgym.training.trainer.Trainer`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

from agentgym.training.tracking import clock


BEYOND_RL = ("sft", "apo")
"""``--algo`` names that run their own loop: supervised fine-tuning and automatic prompt optimization."""

BEYOND_RL_DESCRIPTIONS = {
    "sft": "SFT / rejection sampling: fine-tune on the policy tokens of the best episodes (or --data FILE.jsonl).",
    "apo": "APO: beam search over the system prompt, edits proposed by a critic model from failed episodes.",
}


def _algo_name(argv: Sequence[str]) -> str | None:
    """The ``--algo`` value of a train command line (else of its ``--config`` file), if any."""
    args = list(argv)
    values: dict[str, str] = {}
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in ("--algo", "--config"):
            if eq:
                values[key] = value
            elif i + 1 < len(args):
                values[key] = args[i + 1]
    if "--algo" in values:
        return values["--algo"]
    if "--config" in values:
        from agentgym.workflow.config import load_yaml

        try:
            return load_yaml(values["--config"]).get("algo")
        except (OSError, ValueError):
            return None  # parse_cli reports the problem
    return None


def main(argv: Sequence[str]) -> int:
    """``agentgym train ARGV``: a named RL algorithm through the Trainer, or ``--algo sft`` / ``--algo apo``."""
    from agentgym.workflow.config import parse_command
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import CLI_ALIASES, TrainConfig

    algo = _algo_name(argv)
    if algo == "sft":
        return sft_main(argv)
    if algo == "apo":
        return apo_main(argv)
    usage = ("usage: agentgym train [--config FILE.yaml] [--key value]...\n\n"
             "Run by a wandb sweep agent (WANDB_SWEEP_ID set), the values of wandb.config override these.")
    # The algorithm and its overrides are validated before a model loads.
    cfg = parse_command(TrainConfig, argv, CLI_ALIASES, usage, validate=TrainConfig.check)
    if isinstance(cfg, int):
        return cfg
    trainer = Trainer(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    print(end_summary(trainer.report, history))
    return 0


def end_summary(report: dict, history: Sequence[dict]) -> str:
    """What a finished run prints: held-out success before -> after, wall time, where everything is, and the
    commands that evaluate and serve the trained model."""
    run_dir = report.get("run_dir", "")
    lines = [f"done in {clock(report.get('wall_s', 0.0))}: {len(history)} iterations"
             + (f", final training success {history[-1].get('success_rate', float('nan')):.3f}" if history else "")]
    before, after = report.get("eval_before"), report.get("eval_after")
    if before and after:
        lines.append(f"held-out greedy success: {before['success_rate']:.3f} -> {after['success_rate']:.3f} "
                     f"({after['episodes']} tasks, {after['success_rate'] - before['success_rate']:+.3f})")
    lines.append(f"  run dir  {run_dir}")
    if report.get("curve"):
        lines.append(f"  curve    {report['curve']}")
    if report.get("model"):
        lines.append(f"  model    {report['model']}")
        lines.append(f"evaluate:  agentgym eval --model {run_dir} --episodes 128 --temperature 0")
        lines.append(f"serve:     agentgym serve --model {report['model']}")
    return "\n".join(lines)


def sft_main(argv: Sequence[str]) -> int:
    """``agentgym train --algo sft [--data FILE.jsonl] [--key value]...``."""
    from agentgym.training.sft import SFTConfig, SFTTrainer
    from agentgym.training.train_config import CLI_ALIASES
    from agentgym.workflow.config import parse_command

    usage = ("usage: agentgym train --algo sft [--data FILE.jsonl] [--config FILE.yaml] [--key value]...\n\n"
             "Supervised fine-tuning on the policy's tokens: rejection sampling from the env (collect, keep the\n"
             "best, fine-tune) or the trajectories of a JSONL file (episode records or chat messages).")

    def validate(c: SFTConfig) -> None:
        c.check()
        c.selection()

    cfg = parse_command(SFTConfig, list(argv), CLI_ALIASES, usage, validate=validate)
    if isinstance(cfg, int):
        return cfg
    try:
        trainer = SFTTrainer(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"agentgym train: error: {e}", file=sys.stderr)
        return 2
    try:
        history = trainer.train()
    finally:
        trainer.close()
    if history:
        last = history[-1]
        parts = [f"done: {len(history)} iterations", f"kept {int(last.get('kept_episodes', 0))} episodes"]
        if math.isfinite(last.get("success_rate", math.nan)):
            parts.append(f"success {last['success_rate']:.3f}")
        if "sft/nll" in last:
            parts.append(f"nll {last['sft/nll']:.3f}")
        print(", ".join(parts) + f"; run dir {trainer.run_dir}")
    return 0


def apo_main(argv: Sequence[str]) -> int:
    """``agentgym train --algo apo [--key value]...``."""
    from agentgym.training.apo import APO_ALIASES, APOConfig, optimize_prompt
    from agentgym.workflow.config import parse_command

    usage = ("usage: agentgym train --algo apo [--config FILE.yaml] [--key value]...\n\n"
             "Automatic prompt optimization: beam search over the env's system prompt; a critic model reads\n"
             "failed episodes and rewrites the prompt; candidates are scored on validation tasks. The best prompt\n"
             "and every candidate's score go to RUN_DIR/apo.json.")
    cfg = parse_command(APOConfig, list(argv), APO_ALIASES, usage, sweep=False)
    if isinstance(cfg, int):
        return cfg
    try:
        result = optimize_prompt(cfg)
    except (TypeError, ValueError) as e:
        print(f"agentgym train: error: {e}", file=sys.stderr)
        return 2
    print(f"done: {result.rounds} rounds, {len(result.history)} prompts scored; best score {result.best.score:.3f} "
          f"(initial {result.initial.score:.3f}), success {result.best.success_rate:.3f}; "
          f"best prompt in {Path(result.run_dir) / 'apo.json'}")
    return 0
