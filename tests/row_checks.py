"""What the tests of agents share: training one and checking that every batch row is exactly the engine's samples,
and the scripted episode of a solver with a tool and a checker."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
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


def say(tok, text: str) -> np.ndarray:
    """The action that replies ``text`` and ends the turn."""
    return np.array(tok(text, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")])


def reward_of(task, result) -> float:
    """The reward of an agent that returns a dict with a ``"reward"``."""
    return result["reward"]


@contextlib.contextmanager
def recording(trainer):
    """While in the block: ``(sampled, batches)``, every ``(prompt, ids, logprobs)`` the trainer's engine generates
    and every ``(episodes, batch)`` the trainer builds."""
    import agentgym.training.trainer as trainer_module

    sampled: list[tuple[list[int], list[int], list[float]]] = []
    batches: list = []
    lock = threading.Lock()
    generate, to_batch = trainer.engine.generate, trainer_module.to_batch

    def recording_generate(prompts, params=None, cache_keys=None):
        outs = generate(prompts, params, cache_keys=cache_keys)
        with lock:
            sampled.extend((list(p), list(o[0].token_ids), list(o[0].logprobs)) for p, o in zip(prompts, outs))
        return outs

    def capturing_to_batch(episodes, pad_id=0):
        batch, stats = to_batch(episodes, pad_id=pad_id)
        batches.append((list(episodes), batch))
        return batch, stats

    trainer.engine.generate, trainer_module.to_batch = recording_generate, capturing_to_batch
    try:
        yield sampled, batches
    finally:
        trainer.engine.generate, trainer_module.to_batch = generate, to_batch


def train_agent(agent, tasks, *, seed: int = 5, train_agents=None, **env_kwargs):
    """Two GRPO iterations of ``agent`` through AgentEnv with the tiny policy (2 groups of 2 episodes).

    Returns ``(history, batches, sampled, tokenizer)`` as :func:`recording` gives them (``sampled`` holds the
    calls of untrained agents too).
    """
    from agentgym.agents.env import AgentEnv
    from agentgym.rollout.collector import Collector
    from agentgym.tiny import make_tiny_policy
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    model, tok = make_tiny_policy(seed=seed)
    run_dir = tempfile.mkdtemp(prefix="agentgym-agent-")
    cfg = TrainConfig(algo="grpo", algo_kwargs={"kl_coef": 0.0}, iterations=2, groups_per_iteration=2, group_size=2,
                      max_new_tokens=6, lr=1e-3, run_dir=run_dir, wandb=False, progress=False, export=False,
                      micro_batch_size=4, eval_episodes=0)  # the rows are checked against every sample
    env_kwargs.setdefault("timeout_s", 60)

    def collector(trainer):
        return Collector(lambda: AgentEnv(agent, tasks, tok, engine=trainer.engine, train_agents=train_agents,
                                          **env_kwargs),
                         trainer.engine, trainer.params, num_groups=cfg.groups_per_iteration,
                         group_size=cfg.group_size)

    trainer = Trainer(cfg, model=model, tokenizer=tok, collector=collector)
    try:
        with recording(trainer) as (sampled, batches):
            history = trainer.train()
    finally:
        trainer.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return history, batches, sampled, tok


def play_solver_tool_checker(env, tok) -> dict:
    """The scripted episode of a solver with an ``add`` tool and a checker after it, for "What is 2 + 3?".

    The solver calls ``add`` (spaced as a model might write it); the framework runs it and asks the solver again
    in a context that extends the last one, call as sampled, by the tool's result; the solver says "It is 5."; the
    checker, in a context of its own, is asked about it and says "5". Returns the last step's info.
    """
    obs, info = env.reset(seed=0)
    prompt = tok.decode(obs.tolist())
    assert info["agent"] == "solver" and "What is 2 + 3?" in prompt and '"name": "add"' in prompt
    obs, _, term, _, info = env.step(say(tok, '<tool_call>{"name":"add","arguments":{"a":2,"b":3}}</tool_call>'))
    assert not term and info["agent"] == "solver" and "context_reset" not in info
    assert tok.decode(obs.tolist()).startswith("\n<|im_start|>tool\n<tool_response>\n5\n</tool_response>")
    obs, _, term, _, info = env.step(say(tok, "It is 5."))
    assert not term and info["agent"] == "checker" and info["context_reset"]
    assert "It is 5." in tok.decode(obs.tolist())
    _, r, term, _, info = env.step(say(tok, "5"))
    assert term and r == 1.0
    return info


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
