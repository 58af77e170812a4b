"""Advantage estimators: pure functions of the batch, in a registry, and `compute_advantages`.

Each estimator takes (batch, cfg, episodes) and returns (advantages [B, T], returns [B, T] or None). The group
estimators start from a credit mode's `Returns` (G per policy token, R_e per episode; see `credit.py`) and subtract
a baseline that depends only on the episode's group, the episodes sampled for the same task:

    b_g = mean_{e in g} R_e                       (computed over episodes, each once, whatever its number of rows)

A baseline that depends only on the task stays unbiased when the policy decides how many turns an episode lasts;
a per-turn-index baseline (the mean over the group's episodes that reached turn k) does not, because the set of
episodes that reach turn k depends on the actions being scored.

Advantages are 0 wherever loss_mask is False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.credit import credit_returns, policy_token_gae
from agentgym.algos.episodes import REQUIRED_KEYS, EpisodeIndex, require_keys
from agentgym.algos.registry import Registry

if TYPE_CHECKING:  # the config imports the registries defined here
    from agentgym.algos.config import AlgoConfig

AdvantageFn = Callable[[TensorDict, "AlgoConfig", EpisodeIndex], tuple[Tensor, Optional[Tensor]]]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - mean) / (std + eps) with mean and (population) std over the positions where `mask` is True.

    When the values do not spread (std + eps == 0, possible with eps = 0), they are only centred: all equal
    values give 0, never NaN.
    """
    mask = mask.bool()
    if not mask.any():
        return torch.zeros_like(x)
    values = x[mask]
    mean = values.mean()
    scale = values.std(unbiased=False) + eps
    if not bool(scale > 0):
        scale = torch.ones_like(scale)
    return torch.where(mask, (x - mean) / scale, 0.0)


def _per_token(per_episode: Tensor, episodes: EpisodeIndex) -> Tensor:
    return episodes.to_rows(per_episode)[:, None]


@register_advantage("grpo")
def grpo_advantage(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> tuple[Tensor, None]:
    """GRPO (Shao et al., DeepSeekMath): group baseline scaled by the group's standard deviation.

        A_{i,t} = (G_{i,t} - mean_g(R)) / (std_g(R) + eps)

    std_g is the Bessel-corrected std of the group's episode returns. A group whose returns spread by no more
    than eps (a group of one, or all equal) is not rescaled: A = G - mean_g(R) there, which is 0 under trajectory
    credit and stays finite under turn/token credit.
    """
    mask = batch["loss_mask"].bool()
    returns = credit_returns(batch, cfg, episodes)
    mean = episodes.group_mean(returns.episode)
    std = episodes.group_std(returns.episode)
    scale = torch.where(std > cfg.adv_eps, std + cfg.adv_eps, 1.0)
    advantages = (returns.tokens - _per_token(mean, episodes)) / _per_token(scale, episodes)
    return torch.where(mask, advantages, 0.0), None


@register_advantage("dr_grpo")
def dr_grpo_advantage(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> tuple[Tensor, None]:
    """Dr. GRPO (Liu et al., "Understanding R1-Zero-Like Training"): the group baseline without std scaling.

        A_{i,t} = G_{i,t} - mean_g(R)
    """
    mask = batch["loss_mask"].bool()
    returns = credit_returns(batch, cfg, episodes)
    mean = episodes.group_mean(returns.episode)
    return torch.where(mask, returns.tokens - _per_token(mean, episodes), 0.0), None


@register_advantage("rloo")
def rloo_advantage(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> tuple[Tensor, None]:
    """RLOO (Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization"): leave-one-out baseline.

        A_{i,t} = G_{i,t} - 1/(K-1) * sum_{j != i} R_j          (K = episodes in the group)

    The baseline excludes episode i, so it is independent of i's actions. A group of one uses its own return.
    """
    mask = batch["loss_mask"].bool()
    returns = credit_returns(batch, cfg, episodes)
    size = episodes.group_size().to(returns.episode.dtype)
    others = episodes.group_sum(returns.episode) - returns.episode
    baseline = torch.where(size > 1, others / (size - 1).clamp(min=1), returns.episode)
    return torch.where(mask, returns.tokens - _per_token(baseline, episodes), 0.0), None


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> tuple[Tensor, None]:
    """REINFORCE++ (Hu et al., "REINFORCE++"): no baseline, global batch normalization.

        A_{i,t} = (G_{i,t} - mean_batch(G)) / (std_batch(G) + eps)   (statistics over all policy tokens)
    """
    mask = batch["loss_mask"].bool()
    returns = credit_returns(batch, cfg, episodes)
    return whiten(returns.tokens, mask, cfg.adv_eps), None


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(
    batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex
) -> tuple[Tensor, None]:
    """REINFORCE++ with baseline (Hu et al., "REINFORCE++"): group mean subtracted, then global normalization.

        A'_{i,t} = G_{i,t} - mean_g(R);   A_{i,t} = (A'_{i,t} - mean_batch(A')) / (std_batch(A') + eps)
    """
    mask = batch["loss_mask"].bool()
    returns = credit_returns(batch, cfg, episodes)
    mean = episodes.group_mean(returns.episode)
    return whiten(returns.tokens - _per_token(mean, episodes), mask, cfg.adv_eps), None


@register_advantage("gae")
def gae_advantage(batch: TensorDict, cfg: AlgoConfig, episodes: EpisodeIndex) -> tuple[Tensor, Tensor]:
    """GAE with a value head (PPO, Schulman et al.), over each episode's policy tokens only.

        delta_n = r_n + gamma V(s_{n+1}) - V(s_n);   A_n = delta_n + gamma lam A_{n+1};   returns_n = A_n + V(s_n)

    n runs over the episode's policy tokens in order, across its rows; observation tokens are skipped, so the
    environment's tokens neither discount nor bootstrap. The value after the last policy token is 0 for an episode
    that terminated; for one that was truncated (``batch["truncated"]``: cut by a context or turn limit, not
    finished) it is V of the state after its last token, ``batch["bootstrap_values"]`` of the row that holds it
    (truncation is not termination: the return would have gone on).
    """
    require_keys(batch, ("values",), "advantage='gae' bootstraps from the value head; fill batch['values']")
    tokens = episodes.policy_tokens(batch)
    rewards = tokens.pack(batch["token_rewards"].float())
    values = tokens.pack(batch["values"].detach().float())
    last_values = None
    if "truncated" in batch.keys() and bool(batch["truncated"].any()):
        require_keys(batch, ("bootstrap_values",), "a truncated episode bootstraps from the value after its last "
                     "token; fill batch['bootstrap_values'] (the value head at each row's last token)")
        last_episode, last_row, _ = tokens.last_positions()
        last_values = values.new_zeros(episodes.num_episodes)
        cut = batch["truncated"].bool()[last_row]
        last_values[last_episode] = torch.where(cut, batch["bootstrap_values"].detach().float()[last_row], 0.0)
    advantages = policy_token_gae(rewards, values, tokens.valid(), cfg.gamma, cfg.lam, last_values)
    return tokens.unpack(advantages), tokens.unpack(advantages + values)


def compute_advantages(batch: TensorDict, cfg: AlgoConfig) -> TensorDict:
    """Add "advantages" [B, T] (and "returns" [B, T] for GAE) to a copy of `batch`.

    Reads loss_mask, token_rewards, turn_ids, episode_return, group_id, episode_id (agent_id if present), and
    values when `cfg.needs_values`. Advantages are 0 off the policy tokens. With `cfg.whiten_advantages`, the
    advantages are then normalized to mean 0, std 1 over all policy tokens of the batch.
    """
    require_keys(batch, REQUIRED_KEYS, "compute_advantages reads them")
    episodes = EpisodeIndex.from_batch(batch, cfg.group_by_agent)
    advantages, returns = ADVANTAGE_ESTIMATORS.lookup(cfg.advantage)(batch, cfg, episodes)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, batch["loss_mask"], cfg.adv_eps)
    out = batch.clone(recurse=False)
    out.set("advantages", advantages.to(batch["token_rewards"].dtype))
    if returns is not None:
        out.set("returns", returns.to(batch["token_rewards"].dtype))
    return out
