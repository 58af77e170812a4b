#!/usr/bin/env bash
# The vLLM engine on a CUDA GPU, in one short run (about 10 minutes): install the `vllm` extra into a venv of its
# own, run the vLLM tests on the GPU, then print a throughput table (rollout tok/s of both engines, GRPO step time).
#
#   bash benchmarks/device_check.sh            # from the repository root, on a machine with a CUDA GPU
#
# It needs a package index for the install (vllm brings its CUDA torch). Results go to benchmarks/results/
# (engine_throughput_gpu.json, grpo_step_gpu.json). Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_GPU_VENV:-.venv-vllm-gpu}
export PIP_DISABLE_PIP_VERSION_CHECK=1 WANDB_MODE=offline WANDB_SILENT=true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    || { echo "no nvidia-smi: this check needs a CUDA GPU" >&2; exit 1; }

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
timeout 420 "$VENV/bin/python" -m pip install -q -e ".[vllm]" "pytest>=8" "pytest-timeout>=2.3"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, torch
print(", ".join(f"{p} {md.version(p)}" for p in ("vllm", "torch", "transformers")), "| cuda", torch.cuda.is_available())
assert torch.cuda.is_available(), "torch sees no CUDA GPU"
PY
echo "install: $(( $(date +%s) - start )) s"

# The embedded default model, converted once into the cache (the tests build tiny models of their own).
"$VENV/bin/python" -c "from agentgym.models import default_model_dir; print(default_model_dir())"
timeout 240 "$VENV/bin/python" -m pytest -q -ra --durations=10 -m vllm tests/test_engine_vllm.py

mkdir -p benchmarks/results
# Rollout throughput: SmolLM2-135M fp32, 128-token prompts, 128 new tokens, both engines in one process.
timeout 180 "$VENV/bin/python" benchmarks/engine_throughput.py --vllm --skip-generate --batch-sizes 8 32 \
    --turns 4 --out benchmarks/results/engine_throughput_gpu.json | grep -v "^{"

# GRPO step time with engine vllm: agentgym train's defaults (GuessNumber, 4 x 8 episodes), 3 iterations. The
# trained model stays where agentgym loads it (the CPU); vLLM samples on the GPU and takes the weights each step.
timeout 180 "$VENV/bin/python" - <<'PY'
import json, statistics, tempfile
from agentgym.training.trainer import TrainConfig, Trainer

cfg = TrainConfig(engine="vllm", iterations=3, wandb=False, progress=False, export=False,
                  run_dir=tempfile.mkdtemp(prefix="device-check-"))
trainer = Trainer(cfg)
try:
    history = trainer.train()
finally:
    trainer.close()
keys = ("iteration_s", "rollout_s", "update_s", "push_s", "rollout_tokens_per_s")
rows = {k: [h[k] for h in history if k in h] for k in keys}
print("| GRPO, engine vllm, SmolLM2-135M | " + " | ".join(keys) + " |")
print("|---|" + "---|" * len(keys))
for i, h in enumerate(history):
    print(f"| iteration {i} | " + " | ".join(f"{h.get(k, float('nan')):.2f}" for k in keys) + " |")
print(f"step-0 engine/trainer logprob max diff {history[0]['engine_trainer_logprob_diff_max']:.2e}, "
      f"ratio mean {history[0]['engine_trainer_ratio_mean']:.6f}")
json.dump({"history": history, "median": {k: statistics.median(v) for k, v in rows.items() if v}},
          open("benchmarks/results/grpo_step_gpu.json", "w"), indent=2)
PY
echo "device check done in $(( $(date +%s) - start )) s"
