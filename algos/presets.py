"""Named algorithms: preset `AlgoConfig` values for PPO and the GRPO family.

    name                   advantage              credit      loss  clip ε low/high  aggregation              KL, β
    ppo                    gae, whitened          token       ppo   0.2 / 0.2        token-mean               -
    grpo                   grpo                   trajectory  ppo   0.2 / 0.2        seq-mean-token-mean      - (k3 loss when β > 0)
    dr_grpo                dr_grpo                trajectory  ppo   0.2 / 0.2        seq-mean-token-sum-norm  -
    dapo                   grpo                   trajectory  ppo   0.2 / 0.28       token-mean               -
    gspo                   grpo                   trajectory  gspo  3e-4 / 4e-4      seq-mean-token-mean      -
    rloo                   rloo                   trajectory  ppo   0.2 / 0.2        seq-mean-token-sum       -
    reinforce_pp           reinforce_pp           token       ppo   0.2 / 0.2        token-mean               k1 reward 0.01
    reinforce_pp_baseline  reinforce_pp_baseline  trajectory  ppo   0.2 / 0.2        token-mean               k2 loss 0.001

dapo also turns on dynamic sampling and overlong shaping (buffer 0.2 of max_tokens, so it needs max_tokens).

grpo's KL term is off by default (β = 0), as in TRL's GRPOTrainer and after DAPO and Dr. GRPO, which drop it for
verifiable rewards: it costs a reference copy of the model and a forward pass per iteration. DeepSeekMath's
β = 0.04 is ``--algo.kl_coef 0.04`` (the k3 estimator in the loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agentgym.algos.config import AlgoConfig
from agentgym.algos.registry import unknown_name_message

ALGORITHMS: dict[str, dict[str, Any]] = {
    "ppo": dict(
        advantage="gae", credit="token", group_size=1, lam=0.95, whiten_advantages=True,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="token-mean",
        value_coef=0.5, value_clip=0.2,
    ),
    "grpo": dict(
        advantage="grpo", credit="trajectory", group_size=8,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="seq-mean-token-mean",
        kl_coef=0.0, kl_estimator="k3",
    ),
    "dr_grpo": dict(
        advantage="dr_grpo", credit="trajectory", group_size=8,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="seq-mean-token-sum-norm",
    ),
    "dapo": dict(
        advantage="grpo", credit="trajectory", group_size=8,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.28, loss_agg="token-mean",
        dynamic_sampling=True, overlong_buffer_frac=0.2, overlong_penalty=1.0,
    ),
    "gspo": dict(
        advantage="grpo", credit="trajectory", group_size=8,
        policy_loss="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq-mean-token-mean",
    ),
    "rloo": dict(
        advantage="rloo", credit="trajectory", group_size=8,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="seq-mean-token-sum",
    ),
    "reinforce_pp": dict(
        advantage="reinforce_pp", credit="token", group_size=1,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="token-mean",
        kl_coef=0.01, kl_estimator="k1", kl_in_reward=True,
    ),
    "reinforce_pp_baseline": dict(
        advantage="reinforce_pp_baseline", credit="trajectory", group_size=8,
        policy_loss="ppo", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="token-mean",
        kl_coef=0.001, kl_estimator="k2",
    ),
}
"""name -> the AlgoConfig fields that define the algorithm (the rest keep their defaults)"""

DESCRIPTIONS: dict[str, str] = {
    "ppo": "PPO (Schulman et al.): clipped ratio, GAE over policy tokens with a value head.",
    "grpo": "GRPO (Shao et al., DeepSeekMath): group-normalized episode returns; KL(k3) in the loss with kl_coef > 0.",
    "dr_grpo": "Dr. GRPO (Liu et al.): group baseline without std scaling, constant loss normalizer.",
    "dapo": "DAPO (Yu et al.): clip-higher, token-mean loss, dynamic sampling, overlong reward shaping.",
    "gspo": "GSPO (Zheng et al.): sequence-level, length-normalized importance ratio with a narrow clip.",
    "rloo": "RLOO (Ahmadian et al.): leave-one-out group baseline, each sequence one action.",
    "reinforce_pp": "REINFORCE++ (Hu et al.): token returns with k1 KL in the reward, global batch normalization.",
    "reinforce_pp_baseline": "REINFORCE++ with baseline (Hu et al.): group mean subtracted, global normalization.",
}
"""name -> one line for `--help` and logs"""


def list_algorithms() -> list[str]:
    """The names `get_algorithm` accepts."""
    return sorted(ALGORITHMS)


def register_algorithm(name: str, description: str, **fields: Any) -> None:
    """Name a combination of `AlgoConfig` fields, so that `get_algorithm(name)` (and `--algo name`) builds it.

    The fields are checked now: an unknown field, or a registry name (advantage, policy_loss, ...) that nothing
    registered, raises ValueError. Re-registering a name replaces it.
    """
    known = {f.name for f in dataclasses.fields(AlgoConfig)}
    for key in fields:
        if key not in known:
            raise ValueError(unknown_name_message(f"AlgoConfig field (of {name!r})", key, known))
    AlgoConfig(**{**fields, "name": name})
    ALGORITHMS[name] = dict(fields)
    DESCRIPTIONS[name] = description


def get_algorithm(name: str, **overrides: Any) -> AlgoConfig:
    """The `AlgoConfig` of the named algorithm, with `overrides` applied to its fields.

    >>> get_algorithm("grpo", kl_coef=0.0, group_size=4).loss_agg
    'seq-mean-token-mean'

    Raises ValueError for an unknown name or an unknown override field, suggesting the closest ones.
    """
    if name not in ALGORITHMS:
        raise ValueError(unknown_name_message("algorithm", name, ALGORITHMS))
    fields = {f.name for f in dataclasses.fields(AlgoConfig)}
    for key in overrides:
        if key not in fields:
            raise ValueError(unknown_name_message(f"AlgoConfig field (override for {name!r})", key, fields))
    values = {**ALGORITHMS[name], "name": name, **overrides}
    return AlgoConfig(**values)
