"""Credit assignment across turns: which return each policy token is credited with.

A credit mode maps the batch to `Returns`: G[b, t] for every policy token (0 elsewhere) and R_e, each episode's
return from its start under the same mode, which is what group baselines average. Modes:

- ``trajectory``: G = R_e = the episode return, on every policy token of the episode.
- ``turn``: G_{e,t} = sum_{j >= k(t)} gamma^(j - k(t)) r_{e,j}, the return-to-go over turns, where r_{e,j} is the
  reward of turn j (the sum of turn j's token_rewards) and k(t) is the turn of token t. R_e = G at turn 0.
- ``token``: the return-to-go over the episode's policy tokens alone, G_n = r_n + gamma G_{n+1}, where n runs over
  policy tokens in order and observation tokens are skipped. R_e = G at the first policy token.

`policy_token_gae` is the generalized advantage estimator (GAE; Schulman et al., "High-Dimensional Continuous
Control Using Generalized Advantage Estimation") over the same squeezed sequence of policy tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.episodes import EpisodeIndex, require_keys
from agentgym.algos.registry import Registry

if TYPE_CHECKING:  # the config imports the registries defined here
    from agentgym.algos.config import AlgoConfig


@dataclass(frozen=True)
class Returns:
    """What a credit mode credits: per-token returns and each episode's return from its start."""

    tokens: Tensor
    """[B, T] G, the return credited to each policy token; 0 off the policy tokens"""
    episode: Tensor
    """[E] R_e, the episode's return from its start (the quantity group baselines are computed from)"""


CreditFn = Callable[[TensorDict, "AlgoConfig", EpisodeIndex], Returns]
CREDIT_MODES: Registry[CreditFn] = Registry("credit assignment mode")
register_credit = CREDIT_MODES.register


def policy_token_gae(rewards: Tensor, values: Tensor, valid: Tensor, gamma: float, lam: float,
                     last_values: Tensor | None = None) -> Tensor:
    """GAE over squeezed sequences of policy tokens, [E, L] in and out.

        delta_n = r_n + gamma * V_{n+1} - V_n          (V_{L_e} = last_values[e]: 0 for an episode that ended,
        A_n     = delta_n + gamma * lam * A_{n+1}       the value of the state after its last token if it was cut)

    With V = 0 and lam = 1, A_n is the discounted return-to-go. Slots past an episode's length must be padding
    at the end (`valid` False there); they get 0. `last_values` [E] (default 0) bootstraps truncated episodes.
    """
    rewards = torch.where(valid, rewards, 0.0)
    values = torch.where(valid, values, 0.0)
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)
    if last_values is not None and values.shape[1]:
        lengths = valid.sum(-1)
        has = lengths > 0
        episodes = torch.arange(values.shape[0], device=values.device)[has]
        next_values = next_values.clone()
        next_values[episodes, lengths[has] - 1] = last_values[has].to(values.dtype)
    deltas = torch.where(valid, rewards + gamma * next_values - values, 0.0)
    decay = gamma * lam
    if decay == 1.0:  # A_n = sum_{m >= n} delta_m: a reversed cumulative sum
        return deltas.flip(1).cumsum(1).flip(1)
    advantages = torch.zeros_like(deltas)
    running = deltas.new_zeros(deltas.shape[0])
    for n in reversed(range(deltas.shape[1])):
        running = deltas[:, n] + decay * running
        advantages[:, n] = running
    return advantages


def discounted_return_to_go(rewards: Tensor, gamma: float) -> Tensor:
    """G_k = r_k + gamma * G_{k+1} along the last dimension of `rewards`."""
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[:-1])
    for k in reversed(range(rewards.shape[-1])):
        running = rewards[..., k] + gamma * running
        returns[..., k] = running
    return returns


@register_credit("trajectory")
def trajectory_credit(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> Returns:
    """Every policy token of an episode is credited with the episode return: G_{e,t} = R_e."""
    require_keys(batch, ("loss_mask", "episode_return"), "trajectory credit reads them")
    mask = batch["loss_mask"].bool()
    episode_return = episodes.episode_values(batch["episode_return"].float(), "episode_return")
    tokens = episodes.to_rows(episode_return)[:, None].expand(mask.shape) * mask
    return Returns(tokens, episode_return)


@register_credit("turn")
def turn_credit(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> Returns:
    """Tokens of turn k get the return-to-go over turns: G_k = sum_{j >= k} gamma^(j-k) r_j."""
    require_keys(batch, ("loss_mask", "token_rewards", "turn_ids"), "turn credit reads them")
    mask = batch["loss_mask"].bool()
    turns = batch["turn_ids"].long().clamp(min=0)
    rewards = batch["token_rewards"].float() * mask
    num_turns = int(turns[mask].max().item()) + 1 if mask.any() else 1
    row_episode = episodes.row_episode[:, None].expand(mask.shape)
    turn_rewards = rewards.new_zeros(episodes.num_episodes, num_turns)
    turn_rewards.index_put_((row_episode[mask], turns[mask]), rewards[mask], accumulate=True)
    turn_returns = discounted_return_to_go(turn_rewards, cfg.gamma)
    tokens = torch.where(mask, turn_returns[row_episode, turns.clamp(max=num_turns - 1)], 0.0)
    return Returns(tokens, turn_returns[:, 0])


@register_credit("token")
def token_credit(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> Returns:
    """Each policy token gets the return-to-go over the episode's policy tokens (observation tokens skipped)."""
    require_keys(batch, ("loss_mask", "token_rewards", "turn_ids"), "token credit reads them")
    tokens = episodes.policy_tokens(batch)
    rewards = tokens.pack(batch["token_rewards"].float())
    returns = policy_token_gae(rewards, torch.zeros_like(rewards), tokens.valid(), cfg.gamma, 1.0)
    episode_return = returns[:, 0] if returns.shape[1] else returns.new_zeros(episodes.num_episodes)
    return Returns(tokens.unpack(returns), episode_return)


def credit_returns(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> Returns:
    """The `Returns` of the credit mode `cfg.credit`."""
    return CREDIT_MODES.lookup(cfg.credit)(batch, cfg, episodes)
