"""Checks shared by the tests that train agents: every batch row is exactly the engine's samples."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter

import numpy as np
import torch


def assert_rows_are_the_episodes(batches) -> None:
    """Each batch row is its episode's tokens (a merged episode one row, else one row per turn), and the trained
    positions are exactly the sampled ids with their engine logprobs. ``batches``: ``(episodes, batch)`` pairs."""
    for episodes, batch in batches:
        by_id = {ep.episode_id: ep for ep in episodes}
        rows: dict[int, list[int]] = {}
        for row in range(batch.batch_size[0]):
            rows.setdefault(int(batch["episode_id"][row]), []).append(row)
        assert rows.keys() == by_id.keys()
        for eid, ep in by_id.items():
            parts = [ep.turns] if ep.is_mergeable() else [[t] for t in ep.turns]
            assert len(rows[eid]) == len(parts)
            for row, part in zip(rows[eid], parts):
                n = int(batch["attention_mask"][row].sum())
                ids, mask = batch["input_ids"][row][:n].tolist(), batch["loss_mask"][row][:n]
                assert ids == part[-1].prompt_ids + part[-1].action_ids
                assert [i for i, m in zip(ids, mask.tolist()) if m] == [i for t in part for i in t.action_ids]
                want = torch.tensor([lp for t in part for lp in t.logprobs], dtype=torch.float32)
                assert torch.equal(batch["old_logprobs"][row][:n][mask], want)


def train_agent(agent, tasks, *, seed: int = 5, train_agents=None, **env_kwargs):
    """Two GRPO iterations of ``agent`` through AgentEnv with the tiny policy (2 groups of 2 episodes).

    Returns ``(history, batches, sampled, tokenizer)``: ``batches`` as :func:`assert_rows_are_the_episodes` takes
    them, ``sampled`` every ``(prompt, ids, logprobs)`` the engine generated (the calls of untrained agents too).
    """
    import threading

    import agentgym.trainer as trainer_module
    from agentgym.agent_env import AgentEnv
    from agentgym.collector import Collector
    from agentgym.tiny import make_tiny_policy
    from agentgym.trainer import TrainConfig, Trainer

    model, tok = make_tiny_policy(seed=seed)
    run_dir = tempfile.mkdtemp(prefix="agentgym-agent-")
    cfg = TrainConfig(algo="grpo", algo_kwargs={"kl_coef": 0.0}, iterations=2, groups_per_iteration=2, group_size=2,
                      max_new_tokens=6, lr=1e-3, run_dir=run_dir, wandb=False, progress=False, export=False,
                      micro_batch_size=4)
    env_kwargs.setdefault("timeout_s", 60)

    def collector(trainer):
        return Collector(lambda: AgentEnv(agent, tasks, tok, engine=trainer.engine, train_agents=train_agents,
                                          **env_kwargs),
                         trainer.engine, trainer.params, num_groups=cfg.groups_per_iteration,
                         group_size=cfg.group_size)

    trainer = Trainer(cfg, model=model, tokenizer=tok, collector=collector)
    sampled: list[tuple[list[int], list[int], list[float]]] = []
    lock = threading.Lock()
    generate = trainer.engine.generate

    def recording_generate(prompts, params=None, cache_keys=None):
        outs = generate(prompts, params, cache_keys=cache_keys)
        with lock:
            sampled.extend((list(p), list(o[0].token_ids), list(o[0].logprobs)) for p, o in zip(prompts, outs))
        return outs

    trainer.engine.generate = recording_generate
    batches = []
    to_batch = trainer_module.to_batch

    def capturing_to_batch(episodes, pad_id=0):
        batch, stats = to_batch(episodes, pad_id=pad_id)
        batches.append((list(episodes), batch))
        return batch, stats

    trainer_module.to_batch = capturing_to_batch
    try:
        history = trainer.train()
    finally:
        trainer_module.to_batch = to_batch
        trainer.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return history, batches, sampled, tok


def assert_trained_on_the_samples(history, batches, sampled) -> tuple[list, list]:
    """Both iterations ran on finite rewards, the trainer's step-0 logprobs equal the engine's (ratio 1), each turn
    is one of the engine's samples in the context it saw, and every batch row is its episode.

    Returns the turns, and the samples that are no turn (the calls of agents that do not train)."""
    assert len(history) == 2 and all(np.isfinite(h["reward_mean"]) for h in history)
    assert history[0]["engine_trainer_logprob_diff_max"] < 1e-4
    assert abs(history[0]["engine_trainer_ratio_mean"] - 1.0) < 1e-4
    assert len(batches) == 2 and all(len(episodes) == 4 for episodes, _ in batches)  # no episode failed
    turns = [t for episodes, _ in batches for ep in episodes for t in ep.turns]
    remaining = Counter((tuple(p), tuple(a), tuple(lp)) for p, a, lp in sampled)
    for t in turns:
        key = (tuple(t.prompt_ids), tuple(t.action_ids), tuple(t.logprobs))
        assert remaining[key] > 0, "a turn that the engine did not sample"
        remaining[key] -= 1
    assert_rows_are_the_episodes(batches)
    return turns, [(list(p), list(a), list(lp)) for (p, a, lp), n in remaining.items() for _ in range(n)]
