"""Policy, KL, entropy, TIS and value losses and their aggregation, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from agentgym.algos import (
    AlgoConfig,
    LossNormalizer,
    actor_loss,
    aggregate,
    clipped_surrogate,
    critic_loss,
    kl_penalty,
    loss_normalizer,
)


def micro_batch(mask: list[list[int]], advantages: list[list[float]], old: list[list[float]] | None = None,
                **extra: list[list[float]]) -> TensorDict:
    m = torch.tensor(mask, dtype=torch.bool)
    data = {
        "loss_mask": m,
        "advantages": torch.tensor(advantages, dtype=torch.float64),
        "old_logprobs": torch.tensor(old, dtype=torch.float64) if old is not None else torch.zeros(m.shape,
                                                                                                 dtype=torch.float64),
    }
    data.update({k: torch.tensor(v, dtype=torch.float64) for k, v in extra.items()})
    return TensorDict(data, batch_size=[m.shape[0]])


def leaf(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# ---------------------------------------------------------------- clipped surrogate

def test_clip_higher_hand_values():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.5, 0.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    losses, clipped, dual = clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.28)
    # max(-A r, -A clip(r, 0.8, 1.28))
    assert losses.tolist() == pytest.approx([-0.5, -1.0, -1.28, 1.5, 0.8])
    assert clipped.tolist() == [False, False, True, False, True]
    assert not dual.any()


def test_dual_clip_bounds_negative_advantage_losses():
    ratio = torch.tensor([4.0, 4.0, 2.0])
    adv = torch.tensor([-1.0, 1.0, -2.0])
    losses, clipped, dual = clipped_surrogate(ratio, adv, 0.2, 0.2, dual_clip_c=3.0)
    # A=-1, r=4: max(4, 1.2) = 4 -> min(4, 3) = 3;  A=+1, r=4: max(-4, -1.2) = -1.2 (no dual clip for A > 0);
    # A=-2, r=2: max(4, 2.4) = 4 < 6 = -cA, kept
    assert losses.tolist() == pytest.approx([3.0, -1.2, 4.0])
    assert dual.tolist() == [True, False, False]


# ---------------------------------------------------------------- actor loss

def test_ppo_actor_loss_value_and_gradient():
    c = AlgoConfig(policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="token-mean")
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    batch = micro_batch([[1, 1, 0], [1, 0, 0]], [[1.0, -1.0, 0.0], [2.0, 0.0, 0.0]], old)
    logprobs = leaf([[math.log(1.1), math.log(1.5), -math.inf], [math.log(1.5), 0.0, 0.0]])
    norm = loss_normalizer(batch, c)
    loss, metrics = actor_loss(logprobs, batch, c, norm)
    # token 1: r=1.1, A=1 -> -1.1 (unclipped);  token 2: r=1.5, A=-1 -> 1.5 (unclipped, pessimistic);
    # token 3: r=1.5, A=2 -> -2 * 1.2 = -2.4 (clipped)
    assert norm.num_tokens == 3 and norm.num_sequences == 2
    assert loss.item() == pytest.approx((-1.1 + 1.5 - 2.4) / 3)
    loss.backward()
    # d/dlogp of -A r = -A r; clipped tokens have no gradient; padding none (and no nan from -inf)
    expected = torch.tensor([[-1.1 / 3, 1.5 / 3, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)
    assert metrics["actor/clip_frac"] == pytest.approx(1 / 3)
    assert metrics["actor/ratio_max"] == pytest.approx(1.5)
    assert metrics["actor/ratio_mean"] == pytest.approx((1.1 + 1.5 + 1.5) / 3)
    approx_kl = sum(r - 1 - math.log(r) for r in (1.1, 1.5, 1.5)) / 3
    assert metrics["actor/approx_kl"] == pytest.approx(approx_kl)
    for key in ("actor/pg_loss", "actor/dual_clip_frac", "actor/ratio_min", "actor/loss"):
        assert key in metrics


def test_gspo_sequence_ratio_value_and_gradient():
    c = AlgoConfig(policy_loss="gspo", clip_eps_low=0.5, clip_eps_high=0.5, loss_agg="seq-mean-token-mean")
    batch = micro_batch([[1, 1, 0], [1, 0, 0]], [[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    logprobs = leaf([[0.1, 0.3, 0.0], [-0.2, 0.0, 0.0]])
    loss, metrics = actor_loss(logprobs, batch, c, loss_normalizer(batch, c))
    s0, s1 = math.exp(0.2), math.exp(-0.2)  # exp(mean log-ratio) of each row
    assert loss.item() == pytest.approx((-s0 * 1.0 + s1 * 1.0) / 2)
    loss.backward()
    # grad of -A s_i wrt each of row i's n_i tokens: -A s_i / n_i, then / N_seq
    expected = torch.tensor([[-s0 / 2 / 2, -s0 / 2 / 2, 0.0], [s1 / 2, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)
    assert metrics["actor/ratio_max"] == pytest.approx(s0)


def test_gspo_narrow_clip_clips_the_whole_sequence():
    c = AlgoConfig(policy_loss="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq-mean-token-mean")
    batch = micro_batch([[1, 1]], [[1.0, 1.0]])
    logprobs = leaf([[0.1, 0.3]])
    loss, metrics = actor_loss(logprobs, batch, c, loss_normalizer(batch, c))
    assert loss.item() == pytest.approx(-(1 + 4e-4))
    loss.backward()
    assert (logprobs.grad == 0).all()
    assert metrics["actor/clip_frac"] == 1.0


def test_kl_loss_term_and_entropy_bonus():
    c = AlgoConfig(loss_agg="token-mean", kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)
    batch = micro_batch([[1, 1]], [[0.0, 0.0]], ref_logprobs=[[math.log(0.25), math.log(0.5)]])
    logprobs = leaf([[math.log(0.5), math.log(0.5)]])
    batch["old_logprobs"] = logprobs.detach().clone()
    entropy = torch.tensor([[1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    loss, metrics = actor_loss(logprobs, batch, c, loss_normalizer(batch, c), entropy=entropy)
    k3 = 0.5 - math.log(0.5) - 1  # ρ = π_ref/π = 0.5
    assert loss.item() == pytest.approx(0.1 * (k3 + 0.0) / 2 - 0.01 * (1.0 + 3.0) / 2)
    assert metrics["actor/kl_ref"] == pytest.approx(k3 / 2)
    assert metrics["actor/entropy"] == pytest.approx(2.0)
    loss.backward()
    assert entropy.grad[0].tolist() == pytest.approx([-0.005, -0.005])
    # d k3 / d logp = 1 - ρ
    assert logprobs.grad[0].tolist() == pytest.approx([0.1 * (1 - 0.5) / 2, 0.0])


def test_kl_in_reward_keeps_it_out_of_the_loss():
    c = AlgoConfig(kl_coef=0.1, kl_in_reward=True)
    batch = micro_batch([[1]], [[0.0]])  # no ref_logprobs needed by the loss
    loss, metrics = actor_loss(leaf([[0.0]]), batch, c, loss_normalizer(batch, c))
    assert loss.item() == 0.0 and "actor/kl_ref" not in metrics


def test_kl_loss_without_ref_logprobs_says_what_to_fill():
    c = AlgoConfig(kl_coef=0.1)
    batch = micro_batch([[1]], [[1.0]])
    with pytest.raises(KeyError, match="ref_logprobs"):
        actor_loss(leaf([[0.0]]), batch, c, loss_normalizer(batch, c))


def test_truncated_importance_sampling():
    c = AlgoConfig(tis_cap=3.0, loss_agg="token-mean")
    trainer = [[-1.0, -1.0, -1.0]]
    engine = [[-1.0 - math.log(2), -1.0 + math.log(2), -1.0 - math.log(5)]]  # π_trainer/π_engine = 2, 0.5, 5
    batch = micro_batch([[1, 1, 1]], [[1.0, 1.0, -1.0]], engine, trainer_old_logprobs=trainer)
    logprobs = leaf(trainer)  # the ratio to π_old (the trainer) is 1
    loss, metrics = actor_loss(logprobs, batch, c, loss_normalizer(batch, c))
    weights = [2.0, 0.5, 3.0]
    assert loss.item() == pytest.approx((-2.0 - 0.5 + 3.0) / 3)
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-w * a / 3 for w, a in zip(weights, [1, 1, -1])])
    assert metrics["actor/tis_weight_max"] == pytest.approx(3.0)
    assert metrics["actor/tis_weight_mean"] == pytest.approx(5.5 / 3)
    assert metrics["actor/tis_clip_frac"] == pytest.approx(1 / 3)
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/mismatch_kl"] > 0

    del batch["trainer_old_logprobs"]
    with pytest.raises(KeyError, match="trainer_old_logprobs"):
        actor_loss(leaf(trainer), batch, c, loss_normalizer(batch, c))


# ---------------------------------------------------------------- aggregation

def test_aggregation_modes_hand_values():
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    c = AlgoConfig(max_tokens=4)
    norm = loss_normalizer(TensorDict({"loss_mask": mask}, batch_size=[3]), c)
    assert norm == LossNormalizer(num_tokens=3.0, num_sequences=2.0, max_tokens=4.0)
    assert aggregate(values, mask, "token-mean", norm).item() == pytest.approx(6 / 3)
    assert aggregate(values, mask, "seq-mean-token-mean", norm).item() == pytest.approx((1.5 + 3) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum", norm).item() == pytest.approx((3 + 3) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", norm).item() == pytest.approx(6 / (2 * 4))
    # without max_tokens, Dr. GRPO's constant is the padded length
    assert loss_normalizer(TensorDict({"loss_mask": mask}, batch_size=[3]), AlgoConfig()).max_tokens == 3.0


def random_minibatch(rows: int = 7, seq_len: int = 9, seed: int = 0) -> tuple[TensorDict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, seq_len, generator=g) < 0.6
    mask[2] = False  # a row without policy tokens
    adv = torch.randn(rows, 1, generator=g).expand(rows, seq_len) + 0.1 * torch.randn(rows, seq_len, generator=g)
    engine = -torch.rand(rows, seq_len, generator=g) * 2
    trainer = engine + 0.3 * torch.randn(rows, seq_len, generator=g)
    batch = TensorDict({
        "loss_mask": mask,
        "advantages": adv.double() * mask,
        "old_logprobs": engine.double(),
        "trainer_old_logprobs": trainer.double(),
        "ref_logprobs": (trainer + 0.2 * torch.randn(rows, seq_len, generator=g)).double(),
        "values": torch.randn(rows, seq_len, generator=g).double(),
        "returns": torch.randn(rows, seq_len, generator=g).double(),
    }, batch_size=[rows])
    logprobs = (trainer + 0.4 * torch.randn(rows, seq_len, generator=g)).double()
    return batch, logprobs


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("policy_loss", ["ppo", "gspo"])
def test_micro_batch_split_does_not_change_loss_or_gradient(agg, policy_loss):
    c = AlgoConfig(loss_agg=agg, policy_loss=policy_loss, clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.05,
                   entropy_coef=0.01, tis_cap=2.0, max_tokens=16)
    batch, logprobs0 = random_minibatch()
    entropy0 = torch.rand(logprobs0.shape, generator=torch.Generator().manual_seed(1)).double()
    norm = loss_normalizer(batch, c)

    def run(splits: list[list[int]]) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        logprobs = logprobs0.clone().requires_grad_(True)
        entropy = entropy0.clone().requires_grad_(True)
        values = batch["values"].clone().add(0.3).requires_grad_(True)
        actor_total, critic_total = 0.0, 0.0
        for rows in splits:
            idx = torch.tensor(rows)
            loss, _ = actor_loss(logprobs[idx], batch[idx], c, norm, entropy=entropy[idx])
            v_loss, _ = critic_loss(values[idx], batch[idx], c, norm)
            (loss + v_loss).backward()
            actor_total += loss.item()
            critic_total += v_loss.item()
        return actor_total, critic_total, logprobs.grad, values.grad

    full = run([list(range(7))])
    for splits in ([[0, 1], [2], [3, 4, 5, 6]], [[6, 0, 3], [5, 1], [2, 4]], [[i] for i in range(7)]):
        split = run(splits)
        assert split[0] == pytest.approx(full[0], rel=1e-9)
        assert split[1] == pytest.approx(full[1], rel=1e-9)
        torch.testing.assert_close(split[2], full[2])
        torch.testing.assert_close(split[3], full[3])


def test_padding_with_non_finite_logprobs_is_harmless():
    c = AlgoConfig(kl_coef=0.1, tis_cap=2.0, policy_loss="gspo", loss_agg="seq-mean-token-mean")
    batch = micro_batch([[1, 0]], [[1.0, 0.0]], [[-1.0, -math.inf]], trainer_old_logprobs=[[-1.0, math.nan]],
                        ref_logprobs=[[-1.2, math.inf]])
    logprobs = leaf([[-0.9, -math.inf]])
    loss, metrics = actor_loss(logprobs, batch, c, loss_normalizer(batch, c))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logprobs.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_empty_micro_batch_gives_zero_loss_with_a_graph():
    c = AlgoConfig()
    batch = micro_batch([[0, 0]], [[0.0, 0.0]])
    logprobs = leaf([[0.0, 0.0]])
    loss, _ = actor_loss(logprobs, batch, c, LossNormalizer(10.0, 4.0, 8.0))
    loss.backward()
    assert loss.item() == 0.0 and (logprobs.grad == 0).all()


# ---------------------------------------------------------------- KL estimators

def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    for name in ("k1", "k3"):
        expectation = (p * kl_penalty(p.log(), q.log(), name)).sum()
        assert expectation.item() == pytest.approx(exact.item())
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all() and (kl_penalty(p.log(), q.log(), "k2") >= 0).all()


def test_unknown_kl_estimator_suggests():
    with pytest.raises(ValueError, match="'k3'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- value loss

def test_clipped_value_loss_hand_values():
    c = AlgoConfig(value_clip=0.2, value_coef=0.5, loss_agg="token-mean")
    batch = micro_batch([[1, 1, 1, 0]], [[0.0] * 4], values=[[0.0, 0.0, 1.0, 0.0]], returns=[[1.0, 1.0, 0.0, 0.0]])
    values = leaf([[0.5, 0.1, 0.5, 7.0]])
    loss, metrics = critic_loss(values, batch, c, loss_normalizer(batch, c))
    # token 0: max((0.5-1)^2, (0.2-1)^2) = 0.64;  token 1: 0.81 (within the clip);  token 2: max(0.25, (0.8-0)^2)
    value_loss = 0.5 * (0.64 + 0.81 + 0.64) / 3
    assert metrics["critic/value_loss"] == pytest.approx(value_loss)
    assert loss.item() == pytest.approx(0.5 * value_loss)
    assert metrics["critic/clip_frac"] == pytest.approx(2 / 3)
    loss.backward()
    # only token 1 moves: d/dV 0.5 * 0.5 * (V - R)^2 / 3 = 0.5 * (0.1 - 1) / 3
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.5 * -0.9 / 3, 0.0, 0.0])


def test_unclipped_value_loss():
    c = AlgoConfig(value_clip=None, value_coef=1.0)
    batch = micro_batch([[1, 1]], [[0.0, 0.0]], values=[[0.0, 0.0]], returns=[[1.0, -1.0]])
    loss, metrics = critic_loss(leaf([[2.0, 0.0]]), batch, c, loss_normalizer(batch, c))
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    assert metrics["critic/clip_frac"] == 0.0
