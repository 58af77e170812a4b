"""The ``agentgym train`` command: parse the run's config, train, print what the run did.

``--algo sft`` and ``--algo apo`` hand the command line to their own loops (:mod:`agentgym.sft`,
:mod:`agentgym.apo`); every other algorithm runs through :class:`~agentgym.trainer.Trainer`.
"""

from __future__ import annotations

from typing import Sequence

from agentgym.tracking import clock


BEYOND_RL = {"sft": "agentgym.sft", "apo": "agentgym.apo"}
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
        from agentgym.config import load_yaml

        try:
            return load_yaml(values["--config"]).get("algo")
        except (OSError, ValueError):
            return None  # parse_cli reports the problem
    return None


def main(argv: Sequence[str]) -> int:
    """``agentgym train ARGV``: a named RL algorithm through the Trainer, or ``--algo sft`` / ``--algo apo``."""
    from agentgym.config import parse_command
    from agentgym.trainer import CLI_ALIASES, TrainConfig, Trainer

    algo = _algo_name(argv)
    if algo in BEYOND_RL:
        import importlib

        return importlib.import_module(BEYOND_RL[algo]).main(argv)
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
