"""Reward shaping before advantages: DAPO's overlong penalty and KL to the reference policy in the reward.

`shape_rewards` keeps the batch consistent: whatever it adds to token_rewards it also adds to the episode_return
of every row of that episode, so trajectory, turn and token credit all see the same shaped rewards.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.config import AlgoConfig
from agentgym.algos.episodes import REQUIRED_KEYS, EpisodeIndex, require_keys
from agentgym.algos.kl import kl_penalty


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer_tokens: int, penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al., "DAPO") for episodes of `lengths` policy tokens.

        R_length(|y|) = 0                                    |y| <= L_max - L_cache
                      = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                      = -1                                   L_max < |y|

    scaled by `penalty`; L_max = max_tokens, L_cache = buffer_tokens (0 gives a hard -penalty beyond L_max).
    """
    lengths = lengths.float()
    start = max_tokens - buffer_tokens
    ramp = (start - lengths) / max(buffer_tokens, 1)
    shaped = torch.where(lengths <= start, 0.0, torch.where(lengths <= max_tokens, ramp, -1.0))
    return penalty * shaped


def shape_rewards(batch: TensorDict, cfg: AlgoConfig) -> TensorDict:
    """A copy of `batch` with shaped token_rewards and episode_return.

    - KL in the reward (cfg.kl_in_reward and cfg.kl_coef > 0): r_t -= β · KL_k(π_old || π_ref)_t on every policy
      token, from the trainer's old logprobs (trainer_old_logprobs when it recomputed them, else the engine's
      old_logprobs) and ref_logprobs (REINFORCE++ puts its k1 penalty here).
    - Overlong (cfg.overlong_buffer_frac > 0): each episode's `overlong_penalty` of its total policy tokens (over
      all its rows) is added to the reward on its last policy token; needs cfg.max_tokens.
    With neither configured, the batch is returned unchanged. Call it after `filter_groups` and before
    `compute_advantages`.
    """
    use_kl = cfg.kl_in_reward and cfg.kl_coef > 0.0
    use_overlong = cfg.overlong_buffer_frac > 0.0
    if not (use_kl or use_overlong):
        return batch
    require_keys(batch, REQUIRED_KEYS, "shape_rewards reads them")
    mask = batch["loss_mask"].bool()
    episodes = EpisodeIndex.from_batch(batch, cfg.group_by_agent)
    rewards = batch["token_rewards"].clone()
    added = torch.zeros_like(rewards)

    if use_kl:
        require_keys(batch, ("ref_logprobs", "old_logprobs"), "cfg.kl_in_reward subtracts β·KL from the rewards")
        old = batch["trainer_old_logprobs"] if "trainer_old_logprobs" in batch.keys() else batch["old_logprobs"]
        kl = kl_penalty(old.float(), batch["ref_logprobs"].float(), cfg.kl_estimator)
        added = added - torch.where(mask, cfg.kl_coef * kl, 0.0).to(rewards.dtype)

    if use_overlong:
        if cfg.max_tokens is None:
            raise ValueError("overlong shaping (overlong_buffer_frac > 0) needs cfg.max_tokens, the policy-token "
                             "budget of an episode; pass max_tokens=... or set overlong_buffer_frac=0.")
        lengths = episodes.episode_sum(mask.sum(-1))
        buffer_tokens = round(cfg.overlong_buffer_frac * cfg.max_tokens)
        penalty = overlong_penalty(lengths, cfg.max_tokens, buffer_tokens, cfg.overlong_penalty)
        last_episode, last_row, last_col = episodes.policy_tokens(batch).last_positions()
        added[last_row, last_col] += penalty[last_episode].to(rewards.dtype)

    episode_added = episodes.episode_sum(added.sum(-1).float())
    out = batch.clone(recurse=False)
    out.set("token_rewards", rewards + added)
    episode_return = batch["episode_return"]
    out.set("episode_return", episode_return + episodes.to_rows(episode_added).to(episode_return.dtype))
    return out
