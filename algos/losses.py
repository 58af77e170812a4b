"""Policy and value losses: `actor_loss` and `critic_loss`, the functions the trainer calls per micro-batch.

Policy loss (PPO, Schulman et al., "Proximal Policy Optimization Algorithms"; clip-higher from DAPO, Yu et al.;
dual-clip from Ye et al., "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning"), per token:

    r_t = π_θ(y_t) / π_old(y_t)                                        (policy_loss="ppo")
    r_t = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)],                          (policy_loss="gspo", Zheng et al., GSPO)
          s_i = exp( (1/|y_i|) Σ_{t in y_i} log(π_θ(y_t) / π_old(y_t)) )   (y_i: the episode, see cfg.sequence)
    l_t = max( -A_t r_t,  -A_t clip(r_t, 1 - ε_low, 1 + ε_high) )
    l_t = min( l_t, -c A_t )   where A_t < 0                              (dual clip, when c is set)
    l_t = w_t · l_t,   w_t = min( π_old(y_t) / π_engine(y_t), C )         (truncated importance sampling, C set)

    L_actor = agg(l) - entropy_coef · agg(H) + β · agg(KL_k(π_θ || π_ref))   (KL term unless it is in the reward)

π_old is the trainer's policy at the start of the step: batch["trainer_old_logprobs"] when present, else the
engine's batch["old_logprobs"]. agg is the `cfg.loss_agg` aggregation with the minibatch's `LossNormalizer`.

Value loss (PPO with value clipping):
    L_V = value_coef · agg( ½ max((V - R)², (V_old + clip(V - V_old, -ε_v, ε_v) - R)²) ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.aggregation import LossNormalizer, aggregate, sequence_keys
from agentgym.algos.episodes import require_keys
from agentgym.algos.kl import kl_penalty
from agentgym.algos.registry import Registry

if TYPE_CHECKING:  # the config imports the registries defined here
    from agentgym.algos.config import AlgoConfig


@dataclass(frozen=True)
class PolicyLossOutput:
    """Per-token policy losses and what the metrics report about them."""

    losses: Tensor
    """[b, T] l_t (0 off the policy tokens)"""
    ratio: Tensor
    """[b, T] the ratio the clip acted on (token ratio for PPO, sequence ratio s_i for GSPO), detached"""
    clipped: Tensor
    """[b, T] bool, True where the clipped term was the one chosen"""
    dual_clipped: Tensor
    """[b, T] bool, True where the dual-clip bound -c·A was the one chosen"""


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, "AlgoConfig", Tensor], PolicyLossOutput]
"""(log_ratio, logprobs, advantages, mask, cfg, seq_ids) -> PolicyLossOutput; seq_ids [b, T] is each policy
token's sequence (`agentgym.algos.sequence_ids`), -1 elsewhere, and a micro-batch holds whole sequences"""
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float,
                      dual_clip_c: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's pessimistic clipped surrogate, as a loss per token, with optional dual clip.

    Returns (losses, clipped, dual_clipped): l = max(-A r, -A clip(r, 1-ε_low, 1+ε_high)), then for A < 0
    l = min(l, -c A) when `dual_clip_c` = c is given.
    """
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    losses = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        bound = -advantages * dual_clip_c
        dual_clipped = (advantages < 0) & (bound < losses)
        losses = torch.where(dual_clipped, bound, losses)
    return losses, clipped, dual_clipped


@register_policy_loss("ppo")
def ppo_policy_loss(log_ratio: Tensor, logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    cfg: AlgoConfig, seq_ids: Tensor) -> PolicyLossOutput:
    """PPO clip with a per-token ratio r_t = exp(log π_θ(y_t) - log π_old(y_t))."""
    ratio = torch.exp(log_ratio)
    losses, clipped, dual = clipped_surrogate(ratio, advantages, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)
    return PolicyLossOutput(losses.masked_fill(~mask, 0.0), ratio.detach(), clipped & mask, dual & mask)


@register_policy_loss("gspo")
def gspo_policy_loss(log_ratio: Tensor, logprobs: Tensor, advantages: Tensor, mask: Tensor,
                     cfg: AlgoConfig, seq_ids: Tensor) -> PolicyLossOutput:
    """GSPO (Zheng et al., "Group Sequence Policy Optimization"): clip the length-normalized sequence ratio.

    log s_i = (1/|y_i|) Σ_t log r_t over the policy tokens of sequence i (`seq_ids`: the episode, across its rows).
    The token form r_t = sg[s_i] · π_θ(y_t)/sg[π_θ(y_t)] has value s_i and the gradient of s_i spread over the
    tokens, so with seq-mean-token-mean aggregation the loss equals GSPO's sequence objective in value and gradient.
    """
    ids = torch.where(mask, seq_ids, 0)
    num = int(ids.max().item()) + 1 if ids.numel() else 1
    sums = log_ratio.new_zeros(num).index_add(0, ids[mask], log_ratio.detach()[mask])
    lengths = torch.bincount(ids[mask], minlength=num).clamp(min=1).to(log_ratio.dtype)
    seq_log_ratio = (sums / lengths)[ids]
    token_log_ratio = seq_log_ratio + logprobs - logprobs.detach()
    ratio = torch.exp(token_log_ratio)
    losses, clipped, dual = clipped_surrogate(ratio, advantages, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)
    return PolicyLossOutput(losses.masked_fill(~mask, 0.0), ratio.detach(), clipped & mask, dual & mask)


def truncated_importance_weights(trainer_logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """TIS weights w_t = min(π_trainer(y_t) / π_engine(y_t), C), detached.

    Corrects for the engine sampling from a slightly different distribution than the trainer computes (kernels,
    precision); see Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training".
    """
    return torch.exp((trainer_logprobs - engine_logprobs).detach()).clamp(max=cap)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float(x[mask].float().mean().item()) if mask.any() else 0.0


def _masked_max(x: Tensor, mask: Tensor) -> float:
    return float(x[mask].float().max().item()) if mask.any() else 0.0


def _masked_min(x: Tensor, mask: Tensor) -> float:
    return float(x[mask].float().min().item()) if mask.any() else 0.0


def actor_loss(logprobs: Tensor, batch: TensorDict, cfg: AlgoConfig, normalizer: LossNormalizer,
               entropy: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The policy loss of one micro-batch, scaled so that summing it over micro-batches gives the minibatch loss.

    Args:
        logprobs: [b, T] log π_θ of the sampled tokens, aligned like batch["old_logprobs"] (with gradient).
        batch: the micro-batch; reads advantages, old_logprobs, loss_mask, and trainer_old_logprobs (needed when
            cfg.tis_cap is set, used as π_old whenever present), ref_logprobs (when cfg.kl_coef > 0 and the KL is
            not in the reward).
        cfg: the algorithm config.
        normalizer: `loss_normalizer(minibatch, cfg)`, computed once for the minibatch this micro-batch comes from.
        entropy: [b, T] per-token entropies of π_θ (with gradient) for the entropy bonus and its metric.

    Returns:
        (loss, metrics) with metrics over this micro-batch's policy tokens: actor/pg_loss, actor/clip_frac,
        actor/dual_clip_frac, actor/ratio_mean, actor/ratio_max, actor/ratio_min, actor/approx_kl, and when
        available actor/entropy, actor/kl_ref, actor/tis_weight_mean, actor/tis_weight_max, actor/tis_clip_frac,
        actor/mismatch_kl.
    """
    require_keys(batch, ("advantages", "old_logprobs", "loss_mask"), "actor_loss reads them")
    mask = batch["loss_mask"].bool()
    advantages = batch["advantages"].to(logprobs.dtype)
    engine_logprobs = batch["old_logprobs"].to(logprobs.dtype)
    has_trainer_old = "trainer_old_logprobs" in batch.keys()
    if cfg.tis_cap is not None and not has_trainer_old:
        raise KeyError("cfg.tis_cap is set but the batch lacks 'trainer_old_logprobs': fill it with the trainer's "
                       "logprobs of the sampled tokens before the step's first update, or set tis_cap=None.")
    old_logprobs = batch["trainer_old_logprobs"].to(logprobs.dtype) if has_trainer_old else engine_logprobs
    if "seq_ids" not in batch.keys():  # a micro-batch that is its own minibatch
        batch = sequence_keys(batch, cfg)
    seq_ids, seq_tokens = batch["seq_ids"], batch["seq_tokens"]

    # Zero the padding before any exp() so that inf/nan there cannot reach values or gradients.
    logprobs_m = logprobs.masked_fill(~mask, 0.0)
    log_ratio = logprobs_m - old_logprobs.masked_fill(~mask, 0.0)
    out = POLICY_LOSSES.lookup(cfg.policy_loss)(log_ratio, logprobs_m, advantages, mask, cfg, seq_ids)
    token_losses = out.losses

    metrics: dict[str, float] = {}
    if cfg.tis_cap is not None:
        trainer_m, engine_m = old_logprobs.masked_fill(~mask, 0.0), engine_logprobs.masked_fill(~mask, 0.0)
        weights = truncated_importance_weights(trainer_m, engine_m, cfg.tis_cap)
        token_losses = token_losses * weights
        metrics["actor/tis_weight_mean"] = _masked_mean(weights, mask)
        metrics["actor/tis_weight_max"] = _masked_max(weights, mask)
        metrics["actor/tis_clip_frac"] = _masked_mean((trainer_m - engine_m > math.log(cfg.tis_cap)).float(), mask)
    if has_trainer_old:
        mismatch = kl_penalty(engine_logprobs.masked_fill(~mask, 0.0), old_logprobs.masked_fill(~mask, 0.0), "k3")
        metrics["actor/mismatch_kl"] = _masked_mean(mismatch, mask)

    pg_loss = aggregate(token_losses, mask, cfg.loss_agg, normalizer, seq_tokens)
    loss = pg_loss
    if entropy is not None:
        entropy_term = aggregate(entropy, mask, cfg.loss_agg, normalizer, seq_tokens)
        if cfg.entropy_coef != 0.0:
            loss = loss - cfg.entropy_coef * entropy_term
        metrics["actor/entropy"] = _masked_mean(entropy.detach(), mask)
    if cfg.kl_coef > 0.0 and not cfg.kl_in_reward:
        require_keys(batch, ("ref_logprobs",), "cfg.kl_coef > 0 puts KL to the reference policy in the loss")
        kl = kl_penalty(logprobs_m, batch["ref_logprobs"].to(logprobs.dtype).masked_fill(~mask, 0.0),
                        cfg.kl_estimator)
        loss = loss + cfg.kl_coef * aggregate(kl, mask, cfg.loss_agg, normalizer, seq_tokens)
        metrics["actor/kl_ref"] = _masked_mean(kl.detach(), mask)

    with torch.no_grad():
        token_ratio = torch.exp(log_ratio.detach())
        metrics.update({
            "actor/pg_loss": float(pg_loss.detach().item()),
            "actor/clip_frac": _masked_mean(out.clipped.float(), mask),
            "actor/dual_clip_frac": _masked_mean(out.dual_clipped.float(), mask),
            "actor/ratio_mean": _masked_mean(out.ratio, mask),
            "actor/ratio_max": _masked_max(out.ratio, mask),
            "actor/ratio_min": _masked_min(out.ratio, mask),
            # KL(π_old || π_θ) by k3 with ρ = π_θ/π_old: (ρ - 1) - log ρ.
            "actor/approx_kl": _masked_mean(token_ratio - 1.0 - log_ratio.detach(), mask),
            "actor/loss": float(loss.detach().item()),
        })
    return loss, metrics


def critic_loss(values: Tensor, batch: TensorDict, cfg: AlgoConfig,
                normalizer: LossNormalizer) -> tuple[Tensor, dict[str, float]]:
    """PPO value loss with clipping, weighted by cfg.value_coef, for one micro-batch.

        L_V = value_coef · agg( ½ max( (V - R)², (V_old + clip(V - V_old, -ε_v, ε_v) - R)² ) )

    Args:
        values: [b, T] V_θ at each token (with gradient), aligned like batch["values"].
        batch: the micro-batch; reads values (V_old, from before the update), returns (R), loss_mask.
        cfg: the config (value_coef, value_clip = ε_v or None for no clipping, loss_agg).
        normalizer: `loss_normalizer(minibatch, cfg)` of the minibatch.

    Returns:
        (loss, metrics): critic/value_loss (before value_coef), critic/clip_frac, critic/values_mean,
        critic/returns_mean.
    """
    require_keys(batch, ("values", "returns", "loss_mask"), "critic_loss reads them")
    mask = batch["loss_mask"].bool()
    old_values = batch["values"].to(values.dtype).masked_fill(~mask, 0.0)
    returns = batch["returns"].to(values.dtype).masked_fill(~mask, 0.0)
    values_m = values.masked_fill(~mask, 0.0)
    errors = (values_m - returns) ** 2
    clipped_frac = 0.0
    if cfg.value_clip is not None:
        clipped_values = old_values + (values_m - old_values).clamp(-cfg.value_clip, cfg.value_clip)
        clipped_errors = (clipped_values - returns) ** 2
        clipped_frac = _masked_mean((clipped_errors > errors).float(), mask)
        errors = torch.maximum(errors, clipped_errors)
    if "seq_tokens" not in batch.keys():
        batch = sequence_keys(batch, cfg)
    value_loss = aggregate(0.5 * errors, mask, cfg.loss_agg, normalizer, batch["seq_tokens"])
    metrics = {
        "critic/value_loss": float(value_loss.detach().item()),
        "critic/clip_frac": clipped_frac,
        "critic/values_mean": _masked_mean(values.detach(), mask),
        "critic/returns_mean": _masked_mean(returns, mask),
    }
    return cfg.value_coef * value_loss, metrics
