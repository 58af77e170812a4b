"""The researcher's workflow around runs: the ``agentgym`` command and its config parser, evaluation, looking at
episodes, learning curves, sweeps and the benchmark suite."""
