"""torch.distributed training gives the gradients of one process: 1 vs 2 gloo processes on the same batch."""

import dataclasses
import math
import pickle

import pytest
import torch

from agentgym import algos
from agentgym.rollout.batch import Episode, Turn, to_batch
from agentgym.training.distributed import run_processes, shard_rows
from agentgym.training.policy import forward
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ENV = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}

# (algorithm, overrides, episodes): each aggregation mode, the value head (PPO), the KL to the reference (GRPO),
# and a one-row batch, where rank 1 trains on padding only.
CASES = [
    ("grpo", {"kl_coef": 0.04}, "all"),  # seq-mean-token-mean, KL in the loss
    ("ppo", {}, "all"),  # token-mean, value head
    ("dr_grpo", {}, "all"),  # seq-mean-token-sum-norm
    ("rloo", {"loss_agg": "seq-mean-token-sum"}, "all"),
    ("ppo", {}, "one"),
]


def case_episodes(episodes, which):
    if which == "all":
        return episodes
    return [next(ep for ep in episodes if ep.total_reward > 0 and len(ep.turns) == 1)]


def make_episodes(num_groups=3, group_size=3, seed=0):
    """Episodes of varied lengths (1-2 turns, 1-4 action tokens) and varied rewards, without an engine."""
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for grp in range(num_groups):
        for k in range(group_size):
            ctx = torch.randint(5, 90, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
            turns = []
            for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
                action = torch.randint(5, 90, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
                logprobs = (-torch.rand(len(action), generator=g) * 4 - 0.1).tolist()
                reward = float(torch.rand(1, generator=g) < 0.5)
                turns.append(Turn(list(ctx), action, logprobs, reward))
                ctx = ctx + action + torch.randint(5, 90, (2,), generator=g).tolist()
            episodes.append(Episode(turns, group_id=grp, episode_id=grp * group_size + k, terminated=True))
    return episodes


def make_trainer(algo, overrides, trainer_procs=1, **cfg_kwargs):
    model, tok = make_tiny_policy(seed=0)
    cfg = TrainConfig(
        env="agentgym/GuessNumber-v0", env_kwargs=ENV, algo=algo, algo_kwargs=dict(overrides), group_size=3,
        groups_per_iteration=3, max_new_tokens=4, lr=1e-2, value_lr=1e-2, micro_batch_size=2, minibatches=2,
        epochs=1, max_grad_norm=0.0, wandb=False, progress=False, export=False, save_episodes=0,
        trainer_procs=trainer_procs, **cfg_kwargs,
    )
    return Trainer(cfg, model, tok)


class RecordingOptimizer:
    """Plain SGD over the trainer's parameter groups that records every gradient it applies.

    SGD, not the trainer's AdamW: Adam's first step is about lr * sign(g), which turns float noise in tiny
    gradients into visible parameter differences and would blur the comparison of later steps.
    """

    def __init__(self, trainer):
        self.inner = torch.optim.SGD([dict(g, params=list(g["params"])) for g in trainer.optimizer.param_groups])
        self.param_groups = self.inner.param_groups
        self.names = dict(trainer.model.named_parameters())
        if trainer.value_head is not None:
            self.names.update({f"value_head.{n}": p for n, p in trainer.value_head.named_parameters()})
        self.steps = []

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.steps.append({n: p.grad.detach().clone() for n, p in self.names.items() if p.grad is not None})
        self.inner.step()


def recorded_update(trainer, episodes):
    """Run the trainer's update on the batch of ``episodes``; return the gradients of each optimizer step."""
    batch, _ = to_batch(episodes, pad_id=trainer.tokenizer.pad_token_id)
    batch = trainer._score(batch)
    batch = algos.shape_rewards(batch, trainer.algo)
    batch = algos.compute_advantages(batch, trainer.algo)
    recorder = RecordingOptimizer(trainer)
    trainer.optimizer = recorder
    metrics = trainer.update(batch)
    return recorder.steps, metrics, batch


def _updates(cases, episodes):
    """Each case's recorded gradients, metrics and final weights in this process."""
    out = []
    for algo, overrides, which in cases:
        trainer = make_trainer(algo, overrides, trainer_procs=2)
        assert trainer.parallel is not None and trainer.parallel.world_size == 2
        steps, metrics, _ = recorded_update(trainer, case_episodes(episodes, which))
        out.append((steps, metrics, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
        trainer.close()
    return out


def _assert_same_grads(ref_steps, steps, what):
    assert len(ref_steps) == len(steps) > 0, what
    for k, (a, b) in enumerate(zip(ref_steps, steps)):
        assert a.keys() == b.keys(), what
        total = sum(float(g.norm()) for g in a.values())
        assert total > 0, f"{what}: zero gradient, the comparison would prove nothing"
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-7), (
                f"{what} step {k} {name}: max diff {float((a[name] - b[name]).abs().max()):.3g}, "
                f"norm {float(a[name].norm()):.3g} vs {float(b[name].norm()):.3g}")


def _rank_body(cases, episodes, minibatch, cfg):
    """Everything the two-process tests check, from one start of the processes (starting them is the slow part)."""
    import torch.distributed as dist

    from agentgym.training.distributed import DataParallel, global_loss_normalizer, local_counts, process_rank

    rows, _ = shard_rows(minibatch.batch_size[0], process_rank(), 2)
    counts = local_counts(minibatch[rows])
    norm = global_loss_normalizer(minibatch[rows], cfg)

    model, _ = make_tiny_policy(seed=dist.get_rank())  # different weights: wrapping must make them equal
    parallel = DataParallel(model)
    local, _ = parallel.shard(minibatch, algos.get_algorithm("grpo"))
    received = parallel.broadcast(["from rank 0"] if parallel.is_main else None)
    metrics = parallel.reduce_metrics({"a": 0.0, "b_max": 0.0, "only0": 1.0} if parallel.is_main
                                      else {"a": 1.0, "b_max": 1.0})
    first = next(model.parameters()).detach().clone()
    return {"updates": _updates(cases, episodes), "counts": counts, "norm": norm, "shard": local,
            "received": received, "metrics": metrics, "first_param": first, "fsdp": _fsdp_grads(episodes)}


FSDP_ALGO = dict(kl_coef=0.0, group_size=3)


def _grads(policy, model, minibatch, norm, cfg, scale=1.0):
    """Accumulate the actor loss's gradients over micro-batches of 2 rows, as the trainer does."""
    for j in range(0, minibatch.batch_size[0], 2):
        micro = minibatch[j: j + 2]
        out = forward(policy, micro["input_ids"], micro["attention_mask"], micro["loss_mask"], with_entropy=True)
        loss, _ = algos.actor_loss(out.logprobs, micro, cfg, norm, entropy=out.entropy)
        (loss * scale).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def advantage_batch(episodes, cfg):
    batch, _ = to_batch(episodes, pad_id=0)
    return algos.compute_advantages(batch, cfg)


def _fsdp_grads(episodes):
    """FSDP (fully_shard over gloo): this rank's shard of the minibatch, the gathered gradients."""
    from agentgym.training.distributed import DataParallel

    cfg = algos.get_algorithm("grpo", **FSDP_ALGO)
    model, _ = make_tiny_policy(seed=0)
    parallel = DataParallel(model, strategy="fsdp")
    local, norm = parallel.shard(advantage_batch(episodes, cfg), cfg)
    grads = _grads(parallel.module, model, local, norm, cfg, parallel.loss_scale)
    return {n: g.full_tensor() for n, g in grads.items()}


@pytest.fixture(scope="module")
def two_ranks():
    episodes = make_episodes()
    minibatch, _ = to_batch(episodes, pad_id=0)
    minibatch["loss_mask"][1] = False  # a row with no policy token counts as no sequence
    cfg = dataclasses.replace(algos.get_algorithm("grpo"), max_tokens=None)
    return episodes, minibatch, cfg, run_processes(_rank_body, 2, CASES, episodes, minibatch, cfg)


@pytest.mark.slow
def test_two_processes_give_the_gradients_of_one(two_ranks):
    episodes, _, _, ranks = two_ranks
    for c, (algo, overrides, which) in enumerate(CASES):
        trainer = make_trainer(algo, overrides)
        assert trainer.parallel is None
        ref_steps, ref_metrics, batch = recorded_update(trainer, case_episodes(episodes, which))
        assert batch.batch_size[0] % 2 == 1, "an odd row count exercises the padding of the shorter shard"
        for r in range(2):
            steps, metrics, params = ranks[r]["updates"][c]
            _assert_same_grads(ref_steps, steps, f"{algo} rank {r}")
            # The replicas took identical optimizer steps, equal to the single process's.
            for name, p in trainer.model.named_parameters():
                assert torch.allclose(params[name], p.detach(), rtol=1e-4, atol=1e-7), (algo, name)
            assert set(metrics) == set(ref_metrics)
        trainer.close()


@pytest.mark.slow
def test_fsdp_gives_the_gradients_of_one_process(two_ranks):
    episodes, _, _, ranks = two_ranks
    cfg = algos.get_algorithm("grpo", **FSDP_ALGO)
    model, _ = make_tiny_policy(seed=0)
    batch = advantage_batch(episodes, cfg)
    ref = _grads(model, model, batch, algos.loss_normalizer(batch, cfg), cfg)
    assert sum(float(g.norm()) for g in ref.values()) > 0
    for r in range(2):
        got = ranks[r]["fsdp"]
        for name, g in ref.items():
            assert torch.allclose(got[name], g, rtol=1e-4, atol=1e-7), (r, name, float((got[name] - g).abs().max()))


@pytest.mark.slow
def test_loss_normalizer_counts_are_all_reduced(two_ranks):
    _, minibatch, cfg, ranks = two_ranks
    whole = algos.loss_normalizer(minibatch, cfg)
    assert ranks[0]["norm"] == ranks[1]["norm"] == whole
    c0, c1 = ranks[0]["counts"], ranks[1]["counts"]
    # Each rank saw only part of the counts: without the all-reduce the denominators would differ.
    assert 0 < c0[0] < whole.num_tokens and 0 < c1[0] < whole.num_tokens
    assert c0[0] + c1[0] == whole.num_tokens and c0[1] + c1[1] == whole.num_sequences


@pytest.mark.slow
def test_shards_cover_the_minibatch_once_and_pad_evenly(two_ranks):
    _, batch, _, ranks = two_ranks
    l0, l1 = ranks[0]["shard"], ranks[1]["shard"]
    assert l0.batch_size[0] == l1.batch_size[0] == math.ceil(batch.batch_size[0] / 2)
    assert int(l0["loss_mask"].sum() + l1["loss_mask"].sum()) == int(batch["loss_mask"].sum())
    real = [tuple(r.tolist()) for shard in (l0, l1) for r, m in zip(shard["input_ids"], shard["loss_mask"]) if m.any()]
    assert sorted(real) == sorted(tuple(r.tolist()) for r, m in zip(batch["input_ids"], batch["loss_mask"]) if m.any())
    assert ranks[0]["received"] == ranks[1]["received"] == ["from rank 0"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == {"a": 0.5, "b_max": 1.0, "only0": 1.0}
    assert torch.equal(ranks[0]["first_param"], ranks[1]["first_param"])


def test_shard_rows_partition_and_pad():
    for n in (1, 2, 5, 8):
        parts = [shard_rows(n, r, 3) for r in range(3)]
        rows = sorted(int(i) for p, _ in parts for i in p)
        assert rows == list(range(n))
        assert {per for _, per in parts} == {math.ceil(n / 3)}


def test_policy_spec_rebuilds_the_same_policy():
    from agentgym.models import policy_spec

    model, tok = make_tiny_policy(seed=3)
    spec = policy_spec(model, tok, {k: v.clone() for k, v in model.state_dict().items()})
    rebuilt, tok2 = pickle.loads(pickle.dumps(spec)).build()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, rebuilt(ids).logits)
    assert tok2.encode("12") == tok.encode("12")
    other, _ = make_tiny_policy(seed=4)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, other(ids).logits)


@pytest.mark.slow
def test_training_with_two_processes_matches_one(tmp_path):
    """`trainer_procs=2` spawns a second process; two iterations end at the single process's weights."""
    algo = {"entropy_coef": 0.01}  # a gradient even when every episode of the untrained policy fails
    one = make_trainer("grpo", algo, iterations=2, run_dir=str(tmp_path / "one"))
    history_one = one.train()
    one.close()
    two = make_trainer("grpo", algo, trainer_procs=2, iterations=2, run_dir=str(tmp_path / "two"))
    assert two.parallel is not None and two.parallel.is_main and two.parallel.world_size == 2
    history_two = two.train()
    two.close()
    assert [h["episodes"] for h in history_two] == [h["episodes"] for h in history_one] == [9.0, 9.0]
    assert [h["reward_mean"] for h in history_two] == [h["reward_mean"] for h in history_one]
    init = make_tiny_policy(seed=0)[0]
    # AdamW turns float noise in near-zero gradients into small weight differences; they must stay far below
    # what training changed.
    for (name, a), b, c in zip(one.model.named_parameters(), two.model.parameters(), init.parameters()):
        change = float((a - c).detach().abs().max())
        assert change > 0, name
        assert float((a - b).detach().abs().max()) <= 0.02 * change, name
