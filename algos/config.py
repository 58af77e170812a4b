"""`AlgoConfig`: every knob of the algorithm parts in one documented dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from agentgym.algos.advantages import ADVANTAGE_ESTIMATORS
from agentgym.algos.aggregation import AGGREGATIONS
from agentgym.algos.credit import CREDIT_MODES
from agentgym.algos.kl import KL_ESTIMATORS
from agentgym.algos.losses import POLICY_LOSSES


@dataclass
class AlgoConfig:
    """Which advantage estimator, credit assignment, policy loss and aggregation to use, and their constants.

    Named algorithms (`get_algorithm("grpo")`, ...) are instances of this class with preset values.
    The config is validated on construction: unknown part names raise ValueError with the closest known names.
    """

    name: str = "custom"
    """name of the algorithm this config describes (set by `get_algorithm`)"""
    group_size: int = 8
    """episodes sampled per task; their returns form the group baseline (1 when a critic is the baseline)"""

    # --- advantages and credit assignment ---
    advantage: str = "grpo"
    """advantage estimator: grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline | gae"""
    credit: str = "trajectory"
    """credit across turns: trajectory (episode return) | turn (return-to-go over turns) | token (per policy token)"""
    gamma: float = 1.0
    """discount γ: across turns for credit='turn', across policy tokens for credit='token'"""
    lam: float = 0.95
    """GAE λ (advantage='gae' only)"""
    adv_eps: float = 1e-6
    """ε added to a standard deviation before dividing by it"""
    whiten_advantages: bool = False
    """after the estimator, shift and scale advantages to mean 0, std 1 over the batch's policy tokens"""
    group_by_agent: bool = True
    """a group is (group_id, agent_id), so each agent is compared with itself on the same task"""

    # --- policy loss ---
    policy_loss: str = "ppo"
    """policy loss: ppo (per-token ratio) | gspo (sequence-level, length-normalized ratio)"""
    clip_eps_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 - ε_low"""
    clip_eps_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher uses ε_high > ε_low)"""
    dual_clip_c: float | None = None
    """dual-clip constant c > 1: a negative-advantage token loses at most c·|A|; None disables"""
    loss_agg: str = "token-mean"
    """aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm (Dr. GRPO)"""
    sequence: str = "episode"
    """a sequence for aggregation, Dr. GRPO's N_seq and GSPO's ratio: episode (all its turns) | turn"""
    max_tokens: int | None = None
    """policy-token budget of an episode: Dr. GRPO's constant normalizer and DAPO's overlong limit"""
    entropy_coef: float = 0.0
    """weight of the entropy bonus (subtracted from the loss); needs per-token entropies"""
    skip_without_signal: bool = True
    """take no optimizer step on a minibatch whose gradient is 0 (all advantages 0, no other loss term)"""
    tis_cap: float | None = None
    """C in min(π_trainer/π_engine, C), truncated importance sampling for engine/trainer mismatch; None off"""

    # --- KL to the reference policy ---
    kl_coef: float = 0.0
    """β, weight of KL(π_θ || π_ref); 0 disables it and no reference logprobs are needed"""
    kl_estimator: str = "k3"
    """per-token KL estimator: k1 | k2 | k3"""
    kl_in_reward: bool = False
    """subtract β·KL from the token rewards (`shape_rewards`) instead of adding it to the loss"""

    # --- DAPO batch and reward shaping ---
    dynamic_sampling: bool = False
    """keep only groups whose returns differ, sampling more tasks to refill the batch (DAPO dynamic sampling)"""
    max_sampling_rounds: int = 3
    """dynamic sampling: most collections per iteration to refill the batch (DAPO's max_num_gen_batches)"""
    overlong_buffer_frac: float = 0.0
    """width of DAPO's soft overlong penalty zone as a fraction of max_tokens (DAPO: 0.2); 0 disables"""
    overlong_penalty: float = 1.0
    """penalty at and beyond max_tokens; it ramps linearly from 0 across the buffer zone"""

    # --- critic (value head) ---
    value_coef: float = 0.5
    """weight of the value loss in `critic_loss`"""
    value_clip: float | None = 0.2
    """PPO value clipping: new values stay within ±value_clip of the old ones in the loss; None disables"""

    def __post_init__(self) -> None:
        ADVANTAGE_ESTIMATORS.lookup(self.advantage)
        CREDIT_MODES.lookup(self.credit)
        POLICY_LOSSES.lookup(self.policy_loss)
        AGGREGATIONS.lookup(self.loss_agg)
        KL_ESTIMATORS.lookup(self.kl_estimator)

        if self.advantage == "gae" and self.credit != "token":
            raise ValueError(f"advantage='gae' runs over policy tokens; set credit='token' (got {self.credit!r}).")
        if self.sequence not in ("episode", "turn"):
            raise ValueError(f"sequence must be 'episode' or 'turn', got {self.sequence!r}.")
        if self.max_sampling_rounds < 1:
            raise ValueError(f"max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}.")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}.")
        for field_name in ("gamma", "lam"):
            value = getattr(self, field_name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field_name} must lie in [0, 1], got {value}.")
        if not (0.0 <= self.clip_eps_low < 1.0) or self.clip_eps_high < 0.0:
            raise ValueError(
                f"clip epsilons must satisfy 0 <= clip_eps_low < 1 and clip_eps_high >= 0, "
                f"got {self.clip_eps_low}, {self.clip_eps_high}."
            )
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (e.g. 3.0) or None, got {self.dual_clip_c}.")
        if self.tis_cap is not None and self.tis_cap <= 0.0:
            raise ValueError(f"tis_cap must be > 0 (e.g. 2.0) or None, got {self.tis_cap}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive token count or None, got {self.max_tokens}.")
        if not 0.0 <= self.overlong_buffer_frac < 1.0:
            raise ValueError(f"overlong_buffer_frac must lie in [0, 1), got {self.overlong_buffer_frac}.")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}.")
        if self.value_clip is not None and self.value_clip <= 0.0:
            raise ValueError(f"value_clip must be > 0 or None, got {self.value_clip}.")
        if self.adv_eps < 0.0:
            raise ValueError(f"adv_eps must be >= 0, got {self.adv_eps}.")

    @property
    def needs_values(self) -> bool:
        """True when `compute_advantages` reads batch["values"] (a value head is trained)."""
        return self.advantage == "gae"

    @property
    def needs_ref_logprobs(self) -> bool:
        """True when batch["ref_logprobs"] must be filled (KL to the reference policy is on)."""
        return self.kl_coef > 0.0

    @property
    def loss_without_advantages(self) -> bool:
        """True when the loss has a gradient even where every advantage is 0 (entropy bonus, KL in the loss, a
        value head to fit)."""
        return self.needs_values or self.entropy_coef != 0.0 or (self.kl_coef > 0.0 and not self.kl_in_reward)

    @property
    def needs_trainer_logprobs(self) -> bool:
        """True when batch["trainer_old_logprobs"] must be filled (truncated importance sampling is on)."""
        return self.tis_cap is not None
