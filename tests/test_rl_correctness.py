"""RL correctness: no update without signal, every row checked at step 0, loss metrics independent of micro-batching,
the behaviour policy of truncated sampling, episodes as sequences, truncation is not termination, rewards of empty
turns, KL in the reward from the trainer's logprobs."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from agentgym import algos
from agentgym.algos import AlgoConfig, actor_loss, compute_advantages, loss_normalizer, sequence_keys, whiten
from agentgym.rollout.batch import Episode, Turn, to_batch
from agentgym.engines import SamplingParams
from agentgym.engines.base import truncated_log_softmax
from agentgym.engines.transformers_engine import _sample
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig
from tests.test_advantages import Row, make_batch, policy_values

ENV = {"low": 1, "high": 9, "max_turns": 3, "system_prompt": None}


def make_trainer(tmp_path, algo="grpo", **overrides) -> Trainer:
    model, tok = make_tiny_policy(seed=0)
    kwargs = dict(
        env="agentgym/GuessNumber-v0", env_kwargs=ENV, algo=algo, iterations=2, groups_per_iteration=2,
        group_size=4, max_new_tokens=3, lr=1e-2, value_lr=1e-2, minibatches=1, micro_batch_size=3,
        run_dir=str(tmp_path / "run"), wandb=False, progress=False, export=False, save_episodes=0,
        algo_kwargs={"kl_coef": 0.0},
    )
    kwargs.update(overrides)
    return Trainer(TrainConfig(**kwargs), model=model, tokenizer=tok)


def scored_batch(trainer: Trainer, advantages: str) -> TensorDict:
    """A batch of the trainer's own episodes with advantages set by hand: "random" or "zero"."""
    episodes = trainer.collect()
    batch, _ = to_batch(episodes, pad_id=trainer.tokenizer.pad_token_id or 0)
    batch = trainer._score(batch)
    mask = batch["loss_mask"]
    gen = torch.Generator().manual_seed(0)
    adv = torch.randn(mask.shape, generator=gen) if advantages == "random" else torch.zeros(mask.shape)
    batch["advantages"] = torch.where(mask, adv, 0.0)
    return batch


def params_of(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


# ---------------------------------------------------------------- 1. no optimizer step without a learning signal

def test_zero_advantage_minibatch_does_not_move_the_weights(tmp_path):
    trainer = make_trainer(tmp_path, minibatches=2)
    trainer.update(scored_batch(trainer, "random"))  # AdamW now has momentum
    before = params_of(trainer)
    metrics = trainer.update(scored_batch(trainer, "zero"))
    after = params_of(trainer)
    # Without the skip, AdamW's first moment alone would move every weight that moved before.
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert metrics["skipped_steps"] == 2.0
    trainer.close()


def test_a_parameter_group_with_zero_gradient_is_not_stepped(tmp_path):
    import dataclasses

    # PPO: both groups get momentum; then the value loss weighs 0, so the value head's gradient is exactly 0
    # while the policy's is not: the policy steps, the value head must stay where it is.
    trainer = make_trainer(tmp_path, algo="ppo", group_size=1, groups_per_iteration=4,
                           algo_kwargs={"whiten_advantages": False})
    trainer.update(batch_with_returns(trainer))
    trainer.algo = dataclasses.replace(trainer.algo, value_coef=0.0)
    policy_before = params_of(trainer)
    head_before = [p.detach().clone() for p in trainer.value_head.parameters()]
    metrics = trainer.update(batch_with_returns(trainer))
    assert not all(torch.equal(a, b) for a, b in zip(policy_before, params_of(trainer)))
    assert all(torch.equal(a, b.detach()) for a, b in zip(head_before, trainer.value_head.parameters()))
    assert metrics["skipped_steps"] == 0.0
    trainer.close()


def batch_with_returns(trainer: Trainer) -> TensorDict:
    """A PPO batch with random advantages (to give AdamW momentum)."""
    batch = trainer._score(to_batch(trainer.collect(), pad_id=0)[0])
    batch = algos.compute_advantages(batch, trainer.algo)
    gen = torch.Generator().manual_seed(1)
    batch["advantages"] = torch.where(batch["loss_mask"], torch.randn(batch["loss_mask"].shape, generator=gen), 0.0)
    batch["returns"] = torch.where(batch["loss_mask"], torch.randn(batch["loss_mask"].shape, generator=gen), 0.0)
    return batch


def test_has_learning_signal():
    batch = make_batch([Row([(2, 2, 1.0)], episode=0), Row([(1, 2, 0.0)], episode=1)])
    batch["advantages"] = torch.zeros(batch["loss_mask"].shape)
    assert not algos.has_learning_signal(batch, AlgoConfig())
    assert algos.has_learning_signal(batch, AlgoConfig(entropy_coef=0.01))
    assert algos.has_learning_signal(batch, AlgoConfig(kl_coef=0.1))
    assert not algos.has_learning_signal(batch, AlgoConfig(kl_coef=0.1, kl_in_reward=True))
    batch["advantages"][0, 3] = 0.5
    assert algos.has_learning_signal(batch, AlgoConfig())


def test_dynamic_sampling_refills_the_batch_with_informative_groups(tmp_path):
    trainer = make_trainer(tmp_path, algo="dapo", groups_per_iteration=4, group_size=4,
                           algo_kwargs={"max_sampling_rounds": 4, "overlong_buffer_frac": 0.0})
    calls = []
    real = trainer.collect

    def collect(round_=0):
        eps = real(round_=round_)
        calls.append(round_)
        # Round 0: only the first group differs; later rounds: every group differs.
        for ep in eps:
            first = ep.group_id == min(e.group_id for e in eps)
            ep.turns[-1].reward = float(ep.episode_id % 2) if (round_ > 0 or first) else 0.0
        return eps

    trainer.collect = collect
    episodes, stats = trainer._collect_batch()
    groups = {ep.group_id for ep in episodes}
    assert calls == [0, 1] and stats["sampling_rounds"] == 2.0
    assert len(groups) == 4 and len(episodes) == 16  # the batch is full again, and no bigger
    assert algos.informative_groups([(ep.group_id, ep.total_reward) for ep in episodes]) == sorted(
        groups, key=[ep.group_id for ep in episodes].index)
    trainer.close()


def test_informative_groups():
    assert algos.informative_groups([(1, 0.0), (1, 0.0), (2, 0.0), (2, 1.0), (3, 1.0)]) == [2]


# ---------------------------------------------------------------- 2. the step-0 check covers every row

@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_step_zero_check_sees_a_single_broken_row(tmp_path, which):
    trainer = make_trainer(tmp_path, micro_batch_size=2)
    real = trainer.collector.collect

    def collect(seed):
        eps = real(seed)
        ep = {"first": eps[0], "middle": eps[len(eps) // 2], "last": eps[-1]}[which]
        ep.turns[0].logprobs[0] -= 0.5  # this one row's engine logprob is off
        return eps

    trainer.collector.collect = collect
    metrics = trainer.step()
    assert metrics["engine_trainer_logprob_diff_max"] == pytest.approx(0.5, abs=1e-4)
    trainer.close()


def test_step_zero_ratio_mean_is_token_weighted_over_all_rows(tmp_path):
    trainer = make_trainer(tmp_path, micro_batch_size=1)
    metrics = trainer.step()
    assert metrics["engine_trainer_logprob_diff_max"] < 1e-4
    assert metrics["engine_trainer_ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    trainer.close()


# ---------------------------------------------------------------- 3. loss metrics do not depend on micro_batch_size

@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_loss_metrics_do_not_depend_on_micro_batch_size(tmp_path, algo):
    results = []
    for mb in (1, 3, 64):
        overrides = dict(group_size=1, groups_per_iteration=6) if algo == "ppo" else {}
        trainer = make_trainer(tmp_path / str(mb), algo=algo, micro_batch_size=mb, **overrides)
        batch = trainer._score(to_batch(trainer.collect(), pad_id=0)[0])
        batch = algos.compute_advantages(batch, trainer.algo)
        gen = torch.Generator().manual_seed(2)
        batch["advantages"] = torch.where(batch["loss_mask"], torch.randn(batch["loss_mask"].shape, generator=gen), 0.0)
        results.append(trainer.update(batch))
        trainer.close()
    keys = ["actor/pg_loss", "actor/loss", "actor/clip_frac", "actor/entropy"]
    if algo == "ppo":
        keys.append("critic/value_loss")
    for key in keys:
        values = [r[key] for r in results]
        assert values == pytest.approx([values[0]] * 3, rel=1e-4, abs=1e-6), (key, values)


# ---------------------------------------------------------------- 4. whitening equal values

def test_whiten_with_zero_eps_and_equal_values_is_zero():
    x = torch.full((2, 3), 0.7)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = whiten(x, mask, eps=0.0)
    assert torch.equal(out, torch.zeros_like(x))
    batch = make_batch([Row([(2, 2, 1.0)], episode=0), Row([(1, 2, 1.0)], episode=1)])
    for name in ("reinforce_pp", "reinforce_pp_baseline"):
        adv = compute_advantages(batch, AlgoConfig(advantage=name, credit="trajectory", adv_eps=0.0))["advantages"]
        assert torch.isfinite(adv).all() and (adv == 0).all(), name


# ---------------------------------------------------------------- 5. truncated sampling: the real behaviour policy

@pytest.mark.parametrize("top_k, top_p", [(0, 0.8), (5, 1.0), (7, 0.6), (0, 1.0)])
def test_engine_logprob_is_that_of_the_distribution_sampled_from(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 2
    params = SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p)
    expected = truncated_log_softmax(logits / 0.7, top_k, top_p)
    counts = torch.zeros(4, 50)
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    for _ in range(draws):
        tokens, lps = _sample(logits, params, gen)
        assert torch.allclose(lps, expected.gather(1, tokens[:, None]).squeeze(1), atol=1e-5)
        counts[torch.arange(4), tokens] += 1
    # The reported distribution is the one the tokens come from (frequencies within 4 standard errors).
    probs = expected.exp()
    assert (counts[probs == 0] == 0).all()
    se = (probs * (1 - probs) / draws).sqrt()
    assert ((counts / draws - probs).abs() <= 4 * se + 1e-3).all()
    # Truncation renormalizes: the kept mass is 1.
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    if top_k or top_p < 1:
        assert (probs == 0).any()


@pytest.mark.parametrize("top_k, top_p", [(0, 0.7), (4, 1.0), (6, 0.9)])
def test_step_zero_ratio_is_one_under_truncated_sampling(tmp_path, top_k, top_p):
    trainer = make_trainer(tmp_path, top_k=top_k, top_p=top_p, temperature=0.8)
    metrics = trainer.step()
    assert metrics["engine_trainer_logprob_diff_max"] < 1e-4
    assert metrics["engine_trainer_ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    trainer.close()


# ---------------------------------------------------------------- 6. an episode is the sequence

def split_and_single() -> TensorDict:
    """Episode 0 split into two rows (2 + 4 policy tokens), episode 1 one row (2 policy tokens)."""
    return make_batch([
        Row([(2, 2, 0.0)], episode=0, group=0),
        Row([(3, 4, 1.0)], episode=0, group=0, first_turn=1),
        Row([(1, 2, 0.0)], episode=1, group=0),
    ])


def test_seq_mean_weighs_episodes_not_rows():
    batch = split_and_single()
    losses = torch.zeros(batch["loss_mask"].shape)
    mask = batch["loss_mask"]
    losses[0][mask[0]] = 1.0
    losses[1][mask[1]] = 4.0
    losses[2][mask[2]] = 10.0
    c = AlgoConfig(loss_agg="seq-mean-token-mean")
    mb = sequence_keys(batch, c)
    norm = loss_normalizer(mb, c)
    assert norm.num_sequences == 2
    got = algos.aggregate(losses, mask, "seq-mean-token-mean", norm, mb["seq_tokens"])
    # Episode 0: (2*1 + 4*4) / 6 = 3; episode 1: 10. Mean over episodes: 6.5 (per row it would be 5).
    assert float(got) == pytest.approx(6.5)
    # Any split into micro-batches sums to the same.
    parts = sum(float(algos.aggregate(losses[i:i + 1], mask[i:i + 1], "seq-mean-token-mean", norm,
                                      mb["seq_tokens"][i:i + 1])) for i in range(3))
    assert parts == pytest.approx(6.5)
    # The per-turn variant, by name: three sequences (turns), (1 + 4 + 10) / 3.
    t = AlgoConfig(loss_agg="seq-mean-token-mean", sequence="turn")
    mt = sequence_keys(batch, t)
    got_t = algos.aggregate(losses, mask, "seq-mean-token-mean", loss_normalizer(mt, t), mt["seq_tokens"])
    assert float(got_t) == pytest.approx(5.0)


def test_dr_grpo_counts_episodes_whatever_their_turns():
    batch = split_and_single()
    c = AlgoConfig(loss_agg="seq-mean-token-sum-norm", max_tokens=10)
    losses = torch.where(batch["loss_mask"], 1.0, 0.0)
    norm = loss_normalizer(sequence_keys(batch, c), c)
    got = algos.aggregate(losses, batch["loss_mask"], c.loss_agg, norm)
    assert float(got) == pytest.approx(8 / (2 * 10))  # 8 policy tokens over N_seq = 2 episodes, not 3 rows


def test_gspo_ratio_is_the_episodes():
    batch = split_and_single()
    mask = batch["loss_mask"]
    gen = torch.Generator().manual_seed(0)
    old = torch.where(mask, -torch.rand(mask.shape, generator=gen), 0.0)
    new = torch.where(mask, -torch.rand(mask.shape, generator=gen), 0.0).requires_grad_()
    batch["old_logprobs"] = old
    batch["advantages"] = torch.where(mask, 1.0, 0.0)
    c = AlgoConfig(policy_loss="gspo", clip_eps_low=10.0 - 9.5, clip_eps_high=10.0)
    mb = sequence_keys(batch, c)
    _, metrics = actor_loss(new, mb, c, loss_normalizer(mb, c))
    from agentgym.algos.losses import POLICY_LOSSES

    log_ratio = (new - old).detach()
    out = POLICY_LOSSES.lookup("gspo")(log_ratio, new, batch["advantages"], mask, c, mb["seq_ids"])
    ep0 = math.exp(float(log_ratio[:2][mask[:2]].mean()))  # over both rows of episode 0
    ep1 = math.exp(float(log_ratio[2][mask[2]].mean()))
    assert out.ratio[0][mask[0]].tolist() == pytest.approx([ep0] * 2)
    assert out.ratio[1][mask[1]].tolist() == pytest.approx([ep0] * 4)
    assert out.ratio[2][mask[2]].tolist() == pytest.approx([ep1] * 2)
    assert metrics["actor/ratio_max"] == pytest.approx(max(ep0, ep1), rel=1e-5)


def test_micro_batches_keep_an_episodes_rows_together(tmp_path):
    from agentgym.rollout.batch import length_buckets

    batch = make_batch([Row([(2, 2, 0.0)], episode=0), Row([(3, 4, 1.0)], episode=0, first_turn=1),
                        Row([(1, 2, 0.0)], episode=1), Row([(5, 5, 0.0)], episode=2), Row([(1, 1, 0.0)], episode=3)])
    parts = length_buckets(batch, 2)
    rows = sorted(int(r) for p in parts for r in p)
    assert rows == list(range(5))
    for p in parts:
        episodes = set(batch["episode_id"][p].tolist())
        assert all(set(batch["episode_id"][q].tolist()).isdisjoint(episodes) for q in parts if q is not p)
    # Longest first: episode 2 (10 tokens) leads.
    assert batch["episode_id"][parts[0]].tolist()[0] == 2
    # A token limit: rows x longest row stays within it, except for an episode too large alone.
    for limit in (1, 10, 12, 20):
        parts = length_buckets(batch, 8, tokens_per_micro=limit)
        assert sorted(int(r) for p in parts for r in p) == list(range(5))
        for p in parts:
            lengths = batch["attention_mask"][p].sum(-1)
            alone = len(set(batch["episode_id"][p].tolist())) == 1
            assert alone or len(p) * int(lengths.max()) <= limit, (limit, p)


# ---------------------------------------------------------------- 7. truncation is not termination

@pytest.mark.parametrize("truncated", [False, True])
def test_gae_bootstraps_a_truncated_episode(truncated):
    batch = make_batch([Row([(2, 1, 0.0), (3, 2, 1.0)], 0, values=[0.5, 0.6, 0.7])])
    batch["truncated"] = torch.tensor([truncated])
    batch["bootstrap_values"] = torch.tensor([2.0])
    out = compute_advantages(batch, AlgoConfig(advantage="gae", credit="token", gamma=0.9, lam=0.8))
    v_end = 2.0 if truncated else 0.0
    d2 = 1 + 0.9 * v_end - 0.7
    d1 = 0 + 0.9 * 0.7 - 0.6
    d0 = 0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    assert policy_values(out, "advantages", 0) == pytest.approx([a0, a1, a2])


def test_trainer_fills_bootstrap_values_for_ppo(tmp_path):
    trainer = make_trainer(tmp_path, algo="ppo", group_size=1, groups_per_iteration=3)
    batch = trainer._score(to_batch(trainer.collect(), pad_id=0)[0])
    assert batch["bootstrap_values"].shape == (batch.batch_size[0],)
    # The bootstrap is the value head at each row's last real token.
    with torch.no_grad():
        ids, att = batch["input_ids"], batch["attention_mask"]
        hidden = trainer.model(input_ids=ids, attention_mask=att.long(), output_hidden_states=True).hidden_states[-1]
        last = att.sum(-1) - 1
        expected = trainer.value_head(hidden[torch.arange(ids.shape[0]), last])
    assert torch.allclose(batch["bootstrap_values"], expected, atol=1e-5)
    trainer.close()


# ---------------------------------------------------------------- 8. KL in the reward, empty turns

def test_kl_in_reward_uses_the_trainers_old_logprobs():
    batch = make_batch([Row([(2, 2, 1.0)], episode=0)])
    mask = batch["loss_mask"]
    batch["old_logprobs"] = torch.where(mask, -1.0, 0.0)
    batch["trainer_old_logprobs"] = torch.where(mask, -2.0, 0.0)
    batch["ref_logprobs"] = torch.where(mask, -1.5, 0.0)
    c = AlgoConfig(kl_coef=1.0, kl_in_reward=True, kl_estimator="k1")
    out = algos.shape_rewards(batch, c)
    # k1 = old - ref = -2 - (-1.5) = -0.5 per token: reward += 0.5 (the engine's would give -0.5).
    assert policy_values(out, "token_rewards", 0) == pytest.approx([0.5, 1.5])


def test_an_empty_turns_reward_reaches_token_rewards():
    a = Episode([Turn([1, 2], [3, 4], [-0.1, -0.2], reward=0.0),
                 Turn([1, 2, 3, 4, 5], [], [], reward=1.0),
                 Turn([1, 2, 3, 4, 5, 6], [7], [-0.3], reward=0.5)], episode_id=0)
    first_empty = Episode([Turn([1], [], [], reward=2.0), Turn([1, 9], [3], [-0.1], reward=0.0)], episode_id=1)
    for ep in (a, first_empty):
        batch, _ = to_batch([ep])
        assert float(batch["token_rewards"].sum()) == pytest.approx(ep.total_reward)
        assert float(batch["episode_return"][0]) == pytest.approx(ep.total_reward)
    batch, _ = to_batch([a])
    # Merged row: the empty turn's reward sits on turn 0's last policy token (position 3).
    assert batch["token_rewards"][0].tolist()[:7] == pytest.approx([0, 0, 0, 1.0, 0, 0, 0.5])
    c = AlgoConfig(credit="token")
    returns = algos.credit_returns(batch, c, algos.EpisodeIndex.from_batch(batch))
    # Token credit: the first token's return-to-go holds all three rewards (the empty turn's included).
    assert returns.tokens[0][batch["loss_mask"][0]].tolist() == pytest.approx([1.5, 1.5, 0.5])


# ---------------------------------------------------------------- the fast paths compute the same gradients

def _step_gradients(tmp_path, batch, name, **overrides):
    """The gradients of the trainer's first optimizer step on ``batch`` (captured just before AdamW steps)."""
    trainer = make_trainer(tmp_path / name, **overrides)
    grads = []
    real = trainer.optimizer.step

    def step(*args, **kwargs):
        grads.append([p.grad.detach().clone() if p.grad is not None else None for p in trainer.model.parameters()])
        return real(*args, **kwargs)

    trainer.optimizer.step = step
    trainer.update(batch.clone())
    trainer.close()
    return grads[0]


def test_micro_batching_bucketing_checkpointing_and_head_chunks_give_the_same_gradients(tmp_path, monkeypatch):
    from agentgym.training import policy

    source = make_trainer(tmp_path / "source", groups_per_iteration=3)
    batch = scored_batch(source, "random")
    source.close()
    assert batch["attention_mask"].sum(-1).unique().numel() > 1, "rows of different lengths exercise the trimming"
    ref = _step_gradients(tmp_path, batch, "one", micro_batch_size=64, activation_checkpointing="off")
    variants = {
        "row by row": dict(micro_batch_size=1, activation_checkpointing="off"),
        "buckets of 3": dict(micro_batch_size=3, activation_checkpointing="off"),
        "token limit": dict(micro_batch_size=64, activation_memory_mb=1, activation_checkpointing="off"),
        "checkpointed": dict(micro_batch_size=3, activation_checkpointing="on"),
    }
    results = {name: _step_gradients(tmp_path, batch, name, **kw) for name, kw in variants.items()}
    monkeypatch.setattr(policy, "HEAD_CHUNK_TOKENS", 2)
    results["head chunks of 2"] = _step_gradients(tmp_path, batch, "chunks", micro_batch_size=3)
    assert sum(float(g.norm()) for g in ref if g is not None) > 0
    for name, grads in results.items():
        for g, r in zip(grads, ref):
            assert torch.allclose(g, r, rtol=1e-4, atol=1e-7), (name, float((g - r).abs().max()))
