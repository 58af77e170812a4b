"""Advantage estimators, credit assignment, dynamic sampling and reward shaping, against hand computations."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pytest
import torch
from tensordict import TensorDict

from agentgym.algos import (
    AlgoConfig,
    actor_loss,
    compute_advantages,
    filter_groups,
    get_algorithm,
    loss_normalizer,
    overlong_penalty,
    policy_token_gae,
    register_advantage,
    shape_rewards,
)
from agentgym.algos.advantages import ADVANTAGE_ESTIMATORS


@dataclass
class Row:
    """One batch row: turns of (observation tokens, action tokens, reward on the last action token)."""

    turns: list[tuple[int, int, float]]
    episode: int
    group: int = 0
    first_turn: int = 0
    agent: int = 0
    values: list[float] = field(default_factory=list)  # one per action token, in order


def make_batch(rows: list[Row], pad: int = 2, episode_return: dict[int, float] | None = None) -> TensorDict:
    """A batch in the documented format; episode_return defaults to the sum of the episode's turn rewards."""
    lengths = [sum(o + a for o, a, _ in r.turns) for r in rows]
    num_rows, seq_len = len(rows), max(lengths) + pad
    input_ids = torch.zeros(num_rows, seq_len, dtype=torch.long)
    attention = torch.zeros(num_rows, seq_len, dtype=torch.bool)
    loss_mask = torch.zeros(num_rows, seq_len, dtype=torch.bool)
    turn_ids = torch.full((num_rows, seq_len), -1, dtype=torch.long)
    rewards = torch.zeros(num_rows, seq_len)
    values = torch.full((num_rows, seq_len), 99.0)  # junk off the policy tokens: it must be ignored
    totals: dict[tuple[int, int], float] = {}
    for b, r in enumerate(rows):
        t, v = 0, 0
        for k, (n_obs, n_act, reward) in enumerate(r.turns):
            turn = r.first_turn + k
            turn_ids[b, t:t + n_obs + n_act] = turn
            t += n_obs
            loss_mask[b, t:t + n_act] = True
            for j in range(n_act):
                if r.values:
                    values[b, t + j] = r.values[v]
                    v += 1
            t += n_act
            if n_act:
                rewards[b, t - 1] = reward
            key = (r.episode, r.agent)
            totals[key] = totals.get(key, 0.0) + reward
        attention[b, :t] = True
        input_ids[b, :t] = torch.arange(1, t + 1)
    returns = {key: (episode_return or {}).get(key[0], total) for key, total in totals.items()}
    return TensorDict({
        "input_ids": input_ids,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "old_logprobs": torch.zeros(num_rows, seq_len),
        "turn_ids": turn_ids,
        "token_rewards": rewards,
        "values": values,
        "episode_return": torch.tensor([returns[(r.episode, r.agent)] for r in rows]),
        "group_id": torch.tensor([r.group for r in rows]),
        "episode_id": torch.tensor([r.episode for r in rows]),
        "agent_id": torch.tensor([r.agent for r in rows]),
        "num_turns": torch.tensor([len(r.turns) for r in rows]),
        "truncated": torch.zeros(num_rows, dtype=torch.bool),
    }, batch_size=[num_rows])


def policy_values(batch: TensorDict, key: str, row: int) -> list[float]:
    return batch[key][row][batch["loss_mask"][row]].tolist()


def cfg(**kw) -> AlgoConfig:
    return AlgoConfig(**kw)


# ---------------------------------------------------------------- group estimators, trajectory credit

def three_plus_two() -> TensorDict:
    """Group 0: returns 1, 0, 2 (episodes 0-2); group 1: returns 3, 3 (episodes 3-4)."""
    return make_batch([
        Row([(2, 2, 1.0)], episode=0, group=0),
        Row([(1, 3, 0.0)], episode=1, group=0),
        Row([(2, 1, 2.0)], episode=2, group=0),
        Row([(1, 2, 3.0)], episode=3, group=1),
        Row([(3, 1, 3.0)], episode=4, group=1),
    ])


def test_grpo_group_mean_and_std():
    out = compute_advantages(three_plus_two(), cfg(advantage="grpo", adv_eps=1e-6))
    # group 0: mean 1, Bessel std sqrt((0 + 1 + 1) / 2) = 1; group 1: all equal -> 0
    expected = [0.0, -1 / (1 + 1e-6), 1 / (1 + 1e-6), 0.0, 0.0]
    for row, a in enumerate(expected):
        assert policy_values(out, "advantages", row) == pytest.approx([a] * int(out["loss_mask"][row].sum()))
    assert (out["advantages"][~out["loss_mask"]] == 0).all()


def test_dr_grpo_has_no_std_scaling():
    batch = make_batch([Row([(1, 1, 4.0)], 0), Row([(1, 1, 0.0)], 1), Row([(1, 1, 2.0)], 2)])
    out = compute_advantages(batch, cfg(advantage="dr_grpo"))
    assert [policy_values(out, "advantages", b)[0] for b in range(3)] == pytest.approx([2.0, -2.0, 0.0])


def test_rloo_leave_one_out():
    out = compute_advantages(three_plus_two(), cfg(advantage="rloo"))
    # A_i = R_i - mean of the others: 1 - (0+2)/2, 0 - (1+2)/2, 2 - (1+0)/2
    assert [policy_values(out, "advantages", b)[0] for b in range(3)] == pytest.approx([0.0, -1.5, 1.5])
    assert [policy_values(out, "advantages", b)[0] for b in (3, 4)] == pytest.approx([0.0, 0.0])


def test_reinforce_pp_global_normalization_over_tokens():
    # episode 0: 1 policy token with return 1; episode 1: 3 policy tokens with return 0
    batch = make_batch([Row([(2, 1, 1.0)], 0, group=0), Row([(1, 3, 0.0)], 1, group=1)])
    out = compute_advantages(batch, cfg(advantage="reinforce_pp", credit="token", adv_eps=0.0))
    mean, std = 0.25, math.sqrt(0.25 - 0.25**2)  # tokens [1, 0, 0, 0]
    assert policy_values(out, "advantages", 0) == pytest.approx([(1 - mean) / std])
    assert policy_values(out, "advantages", 1) == pytest.approx([(0 - mean) / std] * 3)


def test_reinforce_pp_baseline_subtracts_group_mean_then_normalizes():
    batch = make_batch([
        Row([(1, 1, 2.0)], 0, group=0), Row([(1, 1, 0.0)], 1, group=0),   # centered: +1, -1
        Row([(1, 2, 5.0)], 2, group=1), Row([(1, 2, 5.0)], 3, group=1),   # centered: 0, 0 (two tokens each)
    ])
    out = compute_advantages(batch, cfg(advantage="reinforce_pp_baseline", adv_eps=0.0))
    tokens = torch.tensor([1.0, -1.0, 0, 0, 0, 0])
    std = tokens.std(unbiased=False).item()
    assert [policy_values(out, "advantages", b)[0] for b in range(4)] == pytest.approx([1 / std, -1 / std, 0, 0])


def test_baseline_counts_a_split_episode_once():
    # episode 0 (return 2) is split into two rows, episode 1 (return 0) is one row: the mean is 1, not 4/3
    batch = make_batch([
        Row([(2, 1, 0.0)], episode=0),
        Row([(4, 2, 2.0)], episode=0, first_turn=1),
        Row([(1, 1, 0.0)], episode=1),
    ])
    out = compute_advantages(batch, cfg(advantage="dr_grpo"))
    assert policy_values(out, "advantages", 0) == pytest.approx([1.0])
    assert policy_values(out, "advantages", 1) == pytest.approx([1.0, 1.0])
    assert policy_values(out, "advantages", 2) == pytest.approx([-1.0])


def test_groups_are_per_agent_by_default():
    # one game (group 0) with two agents whose returns differ systematically
    batch = make_batch([
        Row([(1, 1, 1.0)], 0, agent=0), Row([(1, 1, 3.0)], 1, agent=0),
        Row([(1, 1, 10.0)], 0, agent=1), Row([(1, 1, 10.0)], 1, agent=1),
    ])
    per_agent = compute_advantages(batch, cfg(advantage="dr_grpo"))
    assert [policy_values(per_agent, "advantages", b)[0] for b in range(4)] == pytest.approx([-1, 1, 0, 0])
    pooled = compute_advantages(batch, cfg(advantage="dr_grpo", group_by_agent=False))
    assert [policy_values(pooled, "advantages", b)[0] for b in range(4)] == pytest.approx([-5, -3, 4, 4])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"])
@pytest.mark.parametrize("credit", ["trajectory", "turn", "token"])
def test_advantages_are_zero_off_policy_tokens(name, credit):
    if name == "gae" and credit != "token":
        pytest.skip("gae runs over policy tokens only")
    batch = make_batch([
        Row([(2, 2, 1.0), (1, 2, 0.5)], 0, values=[0.1, 0.2, 0.3, 0.4]),
        Row([(3, 1, 0.0)], 1, values=[0.5]),
        Row([(1, 2, 2.0)], 2, group=1, values=[0.0, 0.0]),
        Row([(1, 2, 1.0)], 3, group=1, values=[0.0, 0.0]),
    ])
    out = compute_advantages(batch, cfg(advantage=name, credit=credit))
    assert (out["advantages"][~out["loss_mask"]] == 0).all()
    assert (out["advantages"][out["loss_mask"]] != 0).any()
    assert torch.isfinite(out["advantages"]).all()


def test_compute_advantages_leaves_input_untouched_and_keeps_keys():
    batch = three_plus_two()
    out = compute_advantages(batch, cfg())
    assert "advantages" not in batch.keys() and "returns" not in out.keys()
    assert set(batch.keys()) <= set(out.keys())
    assert out["advantages"].shape == batch["loss_mask"].shape


def test_whiten_advantages_flag():
    out = compute_advantages(three_plus_two(), cfg(advantage="dr_grpo", whiten_advantages=True, adv_eps=0.0))
    a = out["advantages"][out["loss_mask"]]
    assert a.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert a.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_episode_with_two_group_ids_is_rejected():
    batch = make_batch([Row([(1, 1, 1.0)], 0, group=0), Row([(1, 1, 1.0)], 0, group=1, first_turn=1)])
    with pytest.raises(ValueError, match="group_id"):
        compute_advantages(batch, cfg())


def test_missing_key_error_names_it():
    batch = three_plus_two()
    del batch["turn_ids"]
    with pytest.raises(KeyError, match="turn_ids"):
        compute_advantages(batch, cfg())


def test_custom_estimator_via_registry():
    @register_advantage("test_constant")
    def constant(batch, cfg, episodes):
        return batch["loss_mask"].float() * 7.0, None

    try:
        out = compute_advantages(three_plus_two(), AlgoConfig(advantage="test_constant"))
        assert policy_values(out, "advantages", 0) == [7.0, 7.0]
    finally:
        del ADVANTAGE_ESTIMATORS["test_constant"]


# ---------------------------------------------------------------- credit assignment

def test_turn_credit_discounted_return_to_go():
    # episode 0: turn rewards 1, 0, 2 with gamma 0.5 -> G = 1.5, 1, 2; episode 1: one turn, reward 0.5
    batch = make_batch([
        Row([(2, 1, 1.0), (1, 2, 0.0), (1, 1, 2.0)], 0),
        Row([(1, 2, 0.5)], 1),
    ])
    c = cfg(advantage="dr_grpo", credit="turn", gamma=0.5)
    out = compute_advantages(batch, c)
    # baseline = mean of returns from the start = (1.5 + 0.5) / 2 = 1
    assert policy_values(out, "advantages", 0) == pytest.approx([0.5, 0.0, 0.0, 1.0])
    assert policy_values(out, "advantages", 1) == pytest.approx([-0.5, -0.5])


def test_turn_credit_same_for_merged_and_split_rows():
    turns = [(2, 1, 1.0), (1, 2, 0.0), (1, 1, 2.0)]
    merged = make_batch([Row(turns, 0), Row([(1, 2, 0.5)], 1)])
    split = make_batch([
        Row(turns[:1], 0), Row([(4, 2, 0.0)], 0, first_turn=1), Row([(8, 1, 2.0)], 0, first_turn=2),
        Row([(1, 2, 0.5)], 1),
    ])
    c = cfg(advantage="rloo", credit="turn", gamma=0.9)
    a_merged = compute_advantages(merged, c)
    a_split = compute_advantages(split, c)
    assert policy_values(a_merged, "advantages", 0) == pytest.approx(
        sum((policy_values(a_split, "advantages", b) for b in range(3)), []))
    assert policy_values(a_merged, "advantages", 1) == pytest.approx(policy_values(a_split, "advantages", 3))


def test_token_credit_return_to_go_over_policy_tokens():
    # 3 policy tokens (2 in turn 0, 1 in turn 1), rewards 0, 1, 2 on them; gamma 0.5
    batch = make_batch([Row([(2, 2, 1.0), (3, 1, 2.0)], 0)])
    out = compute_advantages(batch, cfg(advantage="reinforce_pp", credit="token", gamma=0.5, adv_eps=0.0))
    returns = torch.tensor([0 + 0.5 * (1 + 0.5 * 2), 1 + 0.5 * 2, 2.0])  # 1.0, 2.0, 2.0
    expected = (returns - returns.mean()) / returns.std(unbiased=False)
    assert policy_values(out, "advantages", 0) == pytest.approx(expected.tolist())


def test_token_credit_and_gae_ignore_inserted_observation_tokens():
    values = [0.5, 0.6, 0.7, 0.2]
    short = make_batch([Row([(1, 2, 0.0), (0, 2, 1.0)], 0, values=values), Row([(1, 1, 0.3)], 1, values=[0.1])])
    long = make_batch([Row([(1, 2, 0.0), (7, 2, 1.0)], 0, values=values), Row([(5, 1, 0.3)], 1, values=[0.1])],
                      pad=5)
    for c in (cfg(advantage="gae", credit="token", gamma=0.9, lam=0.8),
              cfg(advantage="reinforce_pp", credit="token", gamma=0.9),
              cfg(advantage="grpo", credit="token", gamma=0.9)):
        a, b = compute_advantages(short, c), compute_advantages(long, c)
        for row in range(2):
            assert policy_values(a, "advantages", row) == pytest.approx(policy_values(b, "advantages", row))
        if c.advantage == "gae":
            assert policy_values(a, "returns", 0) == pytest.approx(policy_values(b, "returns", 0))


def test_gae_hand_computation():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma 0.9, lam 0.8, V after the end = 0
    batch = make_batch([Row([(2, 1, 0.0), (3, 2, 1.0)], 0, values=[0.5, 0.6, 0.7])])
    out = compute_advantages(batch, cfg(advantage="gae", credit="token", gamma=0.9, lam=0.8))
    d2 = 1 + 0 - 0.7
    d1 = 0 + 0.9 * 0.7 - 0.6
    d0 = 0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    assert policy_values(out, "advantages", 0) == pytest.approx([a0, a1, a2])
    assert policy_values(out, "returns", 0) == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])
    assert (out["returns"][~out["loss_mask"]] == 0).all()


def test_gae_with_gamma_lam_one_is_return_minus_value():
    # the reversed-cumsum path: A_n = sum_{m >= n} r_m - V_n; padding slots stay 0
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 1.0, 9.0], [1.0, 9.0, 9.0, 9.0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    out = policy_token_gae(rewards, values, valid, gamma=1.0, lam=1.0)
    torch.testing.assert_close(out, torch.tensor([[5.5, 4.75, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0]]))
    # the recursive path at lam just below 1 agrees closely
    close = policy_token_gae(rewards, values, valid, gamma=1.0, lam=1.0 - 1e-9)
    torch.testing.assert_close(close, out)


def test_gae_runs_across_the_rows_of_a_split_episode():
    merged = make_batch([Row([(2, 1, 0.0), (3, 2, 1.0)], 0, values=[0.5, 0.6, 0.7])])
    split = make_batch([Row([(2, 1, 0.0)], 0, values=[0.5]), Row([(6, 2, 1.0)], 0, first_turn=1, values=[0.6, 0.7])])
    c = cfg(advantage="gae", credit="token", gamma=0.9, lam=0.8)
    a, b = compute_advantages(merged, c), compute_advantages(split, c)
    assert policy_values(a, "advantages", 0) == pytest.approx(
        policy_values(b, "advantages", 0) + policy_values(b, "advantages", 1))


def test_gae_needs_values_and_token_credit():
    batch = three_plus_two()
    del batch["values"]
    with pytest.raises(KeyError, match="values"):
        compute_advantages(batch, cfg(advantage="gae", credit="token"))
    with pytest.raises(ValueError, match="credit='token'"):
        cfg(advantage="gae", credit="trajectory")


# ---------------------------------------------------------------- unbiasedness when the policy picks the length

STOP, GO, GOOD, BAD = 0, 1, 2, 3
STOP_REWARD = 0.2
# An episode: turn 0 chooses STOP (reward 0.4, end) or GO (reward 0); after GO, turn 1 chooses GOOD (1) or BAD (0).
OUTCOMES = [(STOP,), (GO, GOOD), (GO, BAD)]


def outcome_logprob(theta: torch.Tensor, actions: tuple[int, ...]) -> list[torch.Tensor]:
    p_go, p_good = torch.sigmoid(theta[0]), torch.sigmoid(theta[1])
    logps = [torch.log(p_go) if actions[0] == GO else torch.log(1 - p_go)]
    if len(actions) > 1:
        logps.append(torch.log(p_good) if actions[1] == GOOD else torch.log(1 - p_good))
    return logps


def outcome_rewards(actions: tuple[int, ...]) -> list[float]:
    if actions[0] == STOP:
        return [STOP_REWARD]
    return [0.0, 1.0 if actions[1] == GOOD else 0.0]


def expected_gradient(theta: torch.Tensor, group_size: int, advantages_fn) -> torch.Tensor:
    """E[sum_i sum_t A_{i,t} grad log pi(a_{i,t})] over all joint outcomes of a group, exactly."""
    surrogate = torch.zeros((), dtype=torch.float64)
    for joint in itertools.product(OUTCOMES, repeat=group_size):
        logps = [outcome_logprob(theta, actions) for actions in joint]
        prob = torch.exp(sum(sum(lp) for lp in logps)).detach()
        surrogate = surrogate + prob * advantages_fn(joint, logps)
    (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def ours(c: AlgoConfig):
    """Score a joint outcome with compute_advantages and actor_loss (ratio 1, seq-mean-token-sum)."""

    def score(joint, logps):
        rows = [Row([(1, 1, r) for r in outcome_rewards(actions)], episode=i) for i, actions in enumerate(joint)]
        batch = compute_advantages(make_batch(rows), c)
        logprobs = torch.zeros(batch["loss_mask"].shape, dtype=torch.float64)
        for b, row_logps in enumerate(logps):
            positions = batch["loss_mask"][b].nonzero().flatten()
            for pos, lp in zip(positions.tolist(), row_logps):
                logprobs = logprobs.index_put((torch.tensor([b]), torch.tensor([pos])), lp.reshape(1))
        batch["old_logprobs"] = logprobs.detach()
        loss, _ = actor_loss(logprobs, batch, c, loss_normalizer(batch, c))
        return -loss * len(joint)  # undo the 1/N_seq of seq-mean-token-sum

    return score


def per_turn_index_baseline(joint, logps):
    """The biased alternative: turn k's baseline is the mean return-to-go of the group's episodes that reached k."""
    returns = [outcome_rewards(a) for a in joint]
    to_go = [[sum(r[k:]) for k in range(len(r))] for r in returns]
    total = torch.zeros((), dtype=torch.float64)
    for k in range(2):
        reached = [g[k] for g in to_go if len(g) > k]
        if not reached:
            continue
        baseline = sum(reached) / len(reached)
        for g, lp in zip(to_go, logps):
            if len(g) > k:
                total = total + (g[k] - baseline) * lp[k]
    return total


@pytest.mark.parametrize("credit", ["trajectory", "turn"])
def test_group_baseline_unbiased_when_policy_chooses_episode_length(credit):
    # P(GO) ~ 0.2: an episode that reaches turn 1 is often alone there, where a per-turn-index baseline equals
    # its own return and erases its signal; the two true gradient components are of similar size.
    theta = torch.tensor([-1.4, 0.0], dtype=torch.float64, requires_grad=True)
    p_go, p_good = torch.sigmoid(theta[0]), torch.sigmoid(theta[1])
    objective = (1 - p_go) * STOP_REWARD + p_go * p_good  # J(theta), the expected episode return
    (true_grad,) = torch.autograd.grad(objective, theta)
    k = 3

    base = dict(credit=credit, loss_agg="seq-mean-token-sum")
    rloo = expected_gradient(theta, k, ours(AlgoConfig(advantage="rloo", **base)))
    dr_grpo = expected_gradient(theta, k, ours(AlgoConfig(advantage="dr_grpo", **base)))
    # RLOO's baseline is independent of the episode: K unbiased estimates. The full group mean contains the
    # episode itself with weight 1/K, which scales every component by the same (K-1)/K.
    torch.testing.assert_close(rloo, k * true_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dr_grpo, (k - 1) * true_grad, rtol=1e-5, atol=1e-6)

    biased = expected_gradient(theta, k, per_turn_index_baseline)
    ratios = biased / true_grad
    # the per-turn-index baseline scales the turn-1 parameter less than the turn-0 one: a different direction
    assert ratios[1] < 0.5 * ratios[0]
    cosine = torch.nn.functional.cosine_similarity(biased, true_grad, dim=0)
    assert cosine < 0.95
    assert torch.nn.functional.cosine_similarity(dr_grpo, true_grad, dim=0) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- dynamic sampling

def test_filter_groups_drops_groups_with_equal_returns():
    batch = make_batch([
        Row([(1, 1, 1.0)], 0, group=0), Row([(1, 1, 1.0)], 1, group=0), Row([(1, 1, 1.0)], 2, group=0),
        Row([(1, 1, 0.0)], 3, group=1), Row([(1, 2, 1.0)], 4, group=1),
        Row([(1, 1, 0.0)], 5, group=2), Row([(2, 1, 0.0)], 5, group=2, first_turn=1),  # one split episode
        Row([(1, 1, 0.5)], 6, group=3),
    ], episode_return={5: 0.0})
    c = cfg(dynamic_sampling=True)
    kept, dropped = filter_groups(batch, c)
    assert dropped == 3
    assert kept["episode_id"].tolist() == [3, 4]
    assert filter_groups(batch, cfg(dynamic_sampling=False)) == (batch, 0)


# ---------------------------------------------------------------- reward shaping

def test_overlong_penalty_hand_values():
    # max 10, buffer 2: no penalty up to 8, linear to -1 at 10, -1 beyond; scaled by 0.5
    lengths = torch.tensor([7, 8, 9, 10, 12])
    assert overlong_penalty(lengths, 10, 2, 0.5).tolist() == pytest.approx([0, 0, -0.25, -0.5, -0.5])


def test_shape_rewards_overlong_on_last_policy_token_of_the_episode():
    batch = make_batch([
        Row([(1, 4, 1.0)], 0),                                  # 4 policy tokens: no penalty
        Row([(1, 4, 0.0)], 1), Row([(2, 5, 1.0)], 1, first_turn=1),  # 9 policy tokens over two rows
    ])
    c = cfg(max_tokens=10, overlong_buffer_frac=0.2)  # buffer 2: penalty (8 - 9) / 2 = -0.5
    out = shape_rewards(batch, c)
    assert policy_values(out, "token_rewards", 0) == [0, 0, 0, 1.0]
    assert policy_values(out, "token_rewards", 1) == [0, 0, 0, 0]
    assert policy_values(out, "token_rewards", 2) == [0, 0, 0, 0, 0.5]
    assert out["episode_return"].tolist() == [1.0, 0.5, 0.5]
    assert batch["episode_return"].tolist() == [1.0, 1.0, 1.0]  # input untouched
    with pytest.raises(ValueError, match="max_tokens"):
        shape_rewards(batch, cfg(overlong_buffer_frac=0.2))


def test_shape_rewards_kl_in_reward():
    batch = make_batch([Row([(1, 2, 1.0)], 0), Row([(1, 1, 0.0)], 1)])
    mask = batch["loss_mask"]
    old = torch.zeros_like(batch["old_logprobs"])
    ref = torch.zeros_like(old)
    old[mask] = torch.tensor([-1.0, -2.0, -0.5])
    ref[mask] = torch.tensor([-1.5, -1.0, -0.5])
    batch["old_logprobs"], batch["ref_logprobs"] = old, ref
    out = shape_rewards(batch, cfg(kl_coef=0.1, kl_estimator="k1", kl_in_reward=True))
    # k1 = old - ref = [0.5, -1.0, 0.0]; r -= 0.1 * k1
    assert policy_values(out, "token_rewards", 0) == pytest.approx([-0.05, 1.1])
    assert policy_values(out, "token_rewards", 1) == pytest.approx([0.0])
    assert out["episode_return"].tolist() == pytest.approx([1.05, 0.0])
    assert shape_rewards(batch, cfg()) is batch  # nothing configured: unchanged


def test_shape_rewards_then_turn_credit_sees_the_penalty():
    batch = make_batch([Row([(1, 4, 1.0)], 0), Row([(1, 9, 1.0)], 1)])
    c = get_algorithm("dapo", max_tokens=10, credit="turn", advantage="dr_grpo")
    out = compute_advantages(shape_rewards(batch, c), c)
    # episode 1 ends with 9 of 10 tokens: penalty -0.5 -> returns 1.0 and 0.5, mean 0.75
    assert policy_values(out, "advantages", 0)[0] == pytest.approx(0.25)
    assert policy_values(out, "advantages", 1)[0] == pytest.approx(-0.25)
