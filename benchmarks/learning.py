"""Learning benchmark: every named algorithm on the small envs over 3 seeds, a table and a plot per env.

    python benchmarks/learning.py                        # tiny model: all named algorithms x guess3, guess5 x 3 seeds
    python benchmarks/learning.py --seeds 5 --iterations 40
    python benchmarks/learning.py --real-model           # SmolLM2-135M-Instruct on 2-operand addition (slow on CPU)

A thin preset of the suite (``agentgym bench``; ``--help`` lists every option, and any option given here wins over
the preset). Writes results.md (mean ± std over seeds of the final success and of the area under the success
curve), results.json and curves-ENV.png (seeds shaded) to benchmarks/results/learning/.
"""

import sys

from agentgym.algos import list_algorithms
from agentgym.workflow.suite import main

PRESET = ["--algos", ",".join(list_algorithms()), "--seeds", "3", "--out", "benchmarks/results/learning"]

if __name__ == "__main__":
    args = sys.argv[1:]
    envs = ["--envs", "add" if "--real-model" in args else "guess3,guess5"]
    sys.exit(main(PRESET + envs + args))  # argparse keeps the last value of an option: the user's
