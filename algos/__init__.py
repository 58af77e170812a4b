"""Advantage estimators, credit assignment, policy losses and named algorithms: pure functions over batches.

The trainer calls, per iteration and in this order:

    batch, dropped = filter_groups(batch, cfg)        # DAPO dynamic sampling (no-op unless configured)
    batch = shape_rewards(batch, cfg)                 # overlong penalty, KL in the reward (no-op unless configured)
    batch = compute_advantages(batch, cfg)            # adds "advantages" (and "returns" for GAE)
    for each minibatch:
        minibatch = sequence_keys(minibatch, cfg)     # once per minibatch: which sequence each token is in
        norm = loss_normalizer(minibatch, cfg)        # once per minibatch
        if has_learning_signal(minibatch, cfg):      # else no optimizer step: AdamW's momentum would still move
          for each micro-batch (whole sequences):
            loss, metrics = actor_loss(logprobs, micro, cfg, norm, entropy)
            (+ critic_loss(values, micro, cfg, norm) when cfg.needs_values)
            loss.backward()                           # no division by the number of micro-batches

`cfg` is an `AlgoConfig`, usually from `get_algorithm(name, **overrides)`.
"""

from agentgym.algos.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage, whiten
from agentgym.algos.aggregation import (
    AGGREGATIONS,
    LossNormalizer,
    aggregate,
    loss_normalizer,
    register_aggregation,
    sequence_ids,
    sequence_keys,
)
from agentgym.algos.config import AlgoConfig
from agentgym.algos.credit import CREDIT_MODES, Returns, credit_returns, policy_token_gae, register_credit
from agentgym.algos.dynamic_sampling import filter_groups, has_learning_signal, informative_groups
from agentgym.algos.episodes import EpisodeIndex, PolicyTokens
from agentgym.algos.kl import KL_ESTIMATORS, kl_penalty, register_kl
from agentgym.algos.losses import (
    POLICY_LOSSES,
    PolicyLossOutput,
    actor_loss,
    clipped_surrogate,
    critic_loss,
    register_policy_loss,
    truncated_importance_weights,
)
from agentgym.algos.presets import ALGORITHMS, DESCRIPTIONS, get_algorithm, list_algorithms, register_algorithm
from agentgym.algos.registry import Registry
from agentgym.algos.rewards import overlong_penalty, shape_rewards

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "ALGORITHMS",
    "AlgoConfig",
    "CREDIT_MODES",
    "DESCRIPTIONS",
    "EpisodeIndex",
    "KL_ESTIMATORS",
    "LossNormalizer",
    "POLICY_LOSSES",
    "PolicyLossOutput",
    "PolicyTokens",
    "Registry",
    "Returns",
    "actor_loss",
    "aggregate",
    "clipped_surrogate",
    "compute_advantages",
    "credit_returns",
    "critic_loss",
    "filter_groups",
    "informative_groups",
    "get_algorithm",
    "kl_penalty",
    "list_algorithms",
    "loss_normalizer",
    "sequence_ids",
    "sequence_keys",
    "has_learning_signal",
    "overlong_penalty",
    "policy_token_gae",
    "register_advantage",
    "register_algorithm",
    "register_aggregation",
    "register_credit",
    "register_kl",
    "register_policy_loss",
    "shape_rewards",
    "truncated_importance_weights",
    "whiten",
]
