"""Proof of learning: a tiny model on a small multi-turn env goes from <= 0.3 to >= 0.9 success.

GuessNumber over {1, 2} with two guesses: the policy must guess, read "Higher."/"Lower." (or remember its first
guess) and answer again. A random policy over the tiny tokenizer's ~100 characters almost never names the number.
"""

import pytest
import torch

from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ENV = {"low": 1, "high": 2, "max_turns": 2, "system_prompt": None}


def train(algo: str, iterations: int, tmp_path, seed: int = 0, **algo_kwargs):
    torch.manual_seed(0)
    model, tok = make_tiny_policy(seed=seed)
    cfg = TrainConfig(
        env="agentgym/GuessNumber-v0",
        env_kwargs=ENV,
        algo=algo,
        algo_kwargs=algo_kwargs,
        iterations=iterations,
        groups_per_iteration=16,
        group_size=8,
        max_new_tokens=1,
        lr=3e-3,  # 1e-2 learns faster but may collapse to a policy that ignores the feedback
        value_lr=1e-2,
        minibatches=4,
        micro_batch_size=128,
        run_dir=str(tmp_path / algo),
        wandb=False,
        progress=False,
        export=False,
        seed=seed,
    )
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    before = rates(trainer)
    history = trainer.train()
    after = rates(trainer)
    trainer.close()
    return before, after, history


def rates(trainer) -> tuple[float, float]:
    """Success on 128 held-out tasks, sampled at temperature 1 and greedy."""
    return trainer.evaluate(128, temperature=1.0).success_rate, trainer.evaluate(128).success_rate


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("algo, iterations", [("ppo", 60), ("grpo", 120)])
def test_tiny_model_learns_guess_number(algo, iterations, seed, tmp_path):
    (sampled0, greedy0), (sampled1, greedy1), history = train(algo, iterations, tmp_path, seed=seed, kl_coef=0.0)
    curve = [round(h["success_rate"], 2) for h in history]
    assert sampled0 <= 0.3 and greedy0 <= 0.3, curve
    # The policy's own reply (greedy) solves the task; sampling at temperature 1 is close behind.
    assert greedy1 == 1.0, (sampled1, greedy1, curve)
    assert sampled1 >= 0.6, (sampled1, greedy1, curve)
    # Once learned, it stays learned: after training success first reaches 0.95 it never falls below 0.9 (without
    # the skipped zero-signal steps, GRPO's seed 1 fell to 0.44 at iteration 47 and stayed near 0.5 for 40).
    learned = next((i for i, s in enumerate(curve) if s >= 0.95), None)
    assert learned is not None and min(curve[learned:]) >= 0.9, curve
