"""Benchmark suite: algorithms x envs x seeds -> markdown table, JSON and learning curves.

    python benchmarks/run_suite.py                                   # tiny model, grpo/rloo/ppo on guess3, 3 seeds
    python benchmarks/run_suite.py --algos grpo,dr_grpo --envs guess3,guess5 --seeds 5
    python benchmarks/run_suite.py --real-model --envs add --iterations 20   # SmolLM2-135M-Instruct (slow on CPU)

The same as ``agentgym bench``; ``--help`` lists every option. Outputs go to benchmarks/results/suite/ by default:
results.md (mean ± std over seeds of final success and of the area under the success curve), results.json,
curves-ENV.png, and one run directory per run under runs/.
"""

import sys

from agentgym.workflow.suite import main

if __name__ == "__main__":
    sys.exit(main())
