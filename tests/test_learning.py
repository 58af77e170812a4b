"""Proof of learning: a tiny model on a small multi-turn env goes from <= 0.3 to >= 0.9 success."""

import pytest
import torch

from agentgym.tiny import make_tiny_policy
from agentgym.trainer import TrainConfig, Trainer, evaluate

ENV = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}


def run(algo: str, iterations: int, tmp_path, **algo_kwargs):
    torch.manual_seed(0)
    model, tok = make_tiny_policy(seed=0)
    cfg = TrainConfig(
        env="agentgym/GuessNumber-v0",
        env_kwargs=ENV,
        algo=algo,
        algo_kwargs=algo_kwargs,
        iterations=iterations,
        groups_per_iteration=16,
        group_size=8,
        max_new_tokens=1,
        lr=3e-3,
        value_lr=3e-3,
        micro_batch_size=64,
        run_dir=str(tmp_path / algo),
        wandb=False,
        progress=False,
        export=False,
    )
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    before = evaluate(trainer)
    history = trainer.train()
    after = evaluate(trainer)
    trainer.close()
    return before, after, history


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_tiny_model_learns_guess_number(algo, tmp_path):
    before, after, history = run(algo, 60, tmp_path, kl_coef=0.0)
    assert before <= 0.3
    assert after >= 0.9, [round(h["success_rate"], 2) for h in history]
