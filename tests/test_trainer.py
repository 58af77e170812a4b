"""Trainer invariants: the batch holds the engine's ids, step 0 is on-policy, resume equals an uninterrupted run,
the exported model is the trained one."""

import json

import pytest
import torch

from agentgym.rollout.batch import to_batch
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ENV = {"low": 1, "high": 9, "max_turns": 3, "system_prompt": None}


def make_trainer(tmp_path, name="run", algo="grpo", **overrides):
    model, tok = make_tiny_policy(seed=0)
    kwargs = dict(
        env="agentgym/GuessNumber-v0", env_kwargs=ENV, algo=algo, iterations=2, groups_per_iteration=2,
        group_size=4, max_new_tokens=3, lr=1e-2, value_lr=1e-2, minibatches=2, micro_batch_size=3,
        run_dir=str(tmp_path / name), wandb=False, progress=False, export=False, save_episodes=0,
    )
    kwargs.update(overrides)
    return Trainer(TrainConfig(**kwargs), model=model, tokenizer=tok)


class RecordingEngine:
    """The trainer's engine, recording every (prompt, sampled ids, logprobs) it returns."""

    def __init__(self, engine):
        self.inner, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, params=None, cache_keys=None):
        outs = self.inner.generate(prompts, params, cache_keys=cache_keys)
        for prompt, out in zip(prompts, outs):
            self.calls.append((list(prompt), list(out[0].token_ids), list(out[0].logprobs)))
        return outs


def test_batch_ids_are_the_ids_the_engine_sampled(tmp_path):
    trainer = make_trainer(tmp_path)
    recorder = RecordingEngine(trainer.engine)
    trainer.collector.engine = recorder
    episodes = trainer.collect()
    batch, _ = to_batch(episodes, pad_id=trainer.tokenizer.pad_token_id or 0)
    sampled = {}
    for prompt, ids, lps in recorder.calls:
        sampled.setdefault(tuple(prompt), []).append((ids, lps))
    assert batch["loss_mask"].sum() == sum(len(ids) for _, ids, _ in recorder.calls)
    for row in range(batch.batch_size[0]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        mask = batch["loss_mask"][row][batch["attention_mask"][row].bool()].tolist()
        old = batch["old_logprobs"][row][batch["attention_mask"][row].bool()].tolist()
        # Walk the row's policy spans; each must be exactly one engine output for the context before it.
        i = 0
        while i < len(ids):
            if not mask[i]:
                i += 1
                continue
            j = i
            while j < len(ids) and mask[j]:
                j += 1
            candidates = sampled.get(tuple(ids[:i]), [])
            assert any(c_ids == ids[i:j] for c_ids, _ in candidates), (row, i, j)
            c_lps = next(lp for c_ids, lp in candidates if c_ids == ids[i:j])
            assert old[i:j] == pytest.approx(c_lps, abs=0)
            i = j
    trainer.close()


def test_step_zero_ratio_is_one(tmp_path):
    trainer = make_trainer(tmp_path)
    metrics = trainer.step()
    assert metrics["engine_trainer_logprob_diff_max"] < 1e-4
    assert metrics["engine_trainer_ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    trainer.close()


@pytest.mark.parametrize("algo, algo_kwargs", [("grpo", {"kl_coef": 0.04}), ("ppo", {})])
def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(tmp_path, algo, algo_kwargs):
    straight = make_trainer(tmp_path, "straight", algo=algo, iterations=3, algo_kwargs=algo_kwargs)
    straight.train()
    want = straight._modules()

    first = make_trainer(tmp_path, "first", algo=algo, iterations=2, algo_kwargs=algo_kwargs)
    first.train()  # saves a checkpoint at iteration 2
    first.close()
    resumed = make_trainer(tmp_path, "resumed", algo=algo, iterations=3, resume=str(tmp_path / "first"),
                           algo_kwargs=algo_kwargs)
    assert resumed.iteration == 2
    resumed.train()
    got = resumed._modules()
    for name in want:
        for (n, p), (_, q) in zip(want[name].named_parameters(), got[name].named_parameters()):
            assert torch.equal(p, q), (name, n)
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed_lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert resumed_lines[-1]["reward_mean"] == lines[-1]["reward_mean"]
    assert resumed_lines[-1]["actor/loss"] == lines[-1]["actor/loss"]
    straight.close()
    resumed.close()


def test_a_resumed_run_logs_each_iteration_once(tmp_path):
    # A run that logged iteration 3 but was killed before its checkpoint: the checkpoint of iteration 2 survives.
    first = make_trainer(tmp_path, "run", iterations=3, checkpoint_every=2, save_episodes=2)
    first.train()
    first.close()
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000003")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000002")
    resumed = make_trainer(tmp_path, "run", iterations=4, resume=str(tmp_path / "run"), save_episodes=2)
    assert resumed.iteration == 2
    resumed.train()
    resumed.close()
    metrics = [json.loads(x)["iteration"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    episodes = [json.loads(x)["iteration"] for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3, 4]
    assert episodes == [1, 1, 2, 2, 3, 3, 4, 4]


def test_export_is_a_normal_hf_model_with_the_trained_weights(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = make_trainer(tmp_path, iterations=1, export=True)
    trainer.train()
    path = tmp_path / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tok.encode("Guess a number")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, trainer.model(ids).logits, atol=1e-5)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_000001"
    trainer.close()


class FailingCollector:
    """Every episode fails before the policy's first turn (e.g. an agent that raises)."""

    def __init__(self):
        self.last_unplayed, self.last_stats = [], {}

    def collect(self, seed):
        self.last_unplayed = [{"seed": seed, "error": "ValueError: the agent could not reach its tool"},
                              {"seed": seed + 1, "error": "APIStatusError: 404 no such episode"}]
        return []

    def close(self):
        pass


def test_a_run_where_every_episode_fails_says_why(tmp_path):
    trainer = make_trainer(tmp_path, iterations=5, max_failed_iterations=2, save_episodes=4)
    trainer.collector = FailingCollector()
    with pytest.warns(UserWarning, match="all 2 episodes failed"):
        with pytest.raises(RuntimeError, match=r"all 2 episodes failed.*could not reach its tool.*404 no such "
                                               r"episode.*2 such iterations in a row"):
            trainer.train()
    records = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 1, 2, 2] and all(r["failed"] for r in records)
    assert records[0]["error"] == "ValueError: the agent could not reach its tool"
