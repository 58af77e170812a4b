"""Per-token estimators of KL(π_θ || π_ref) from the log-probabilities of sampled tokens.

With x ~ π_θ and log ρ = log π_ref(x) - log π_θ(x) (Schulman, "Approximating KL Divergence"):

    k1 = -log ρ                      unbiased, can be negative
    k2 = (log ρ)^2 / 2               biased, low variance, >= 0
    k3 = (ρ - 1) - log ρ             unbiased, low variance, >= 0 (GRPO's KL term, DeepSeekMath)

The functions take (logprobs, ref_logprobs) elementwise; mask the result yourself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agentgym.algos.registry import Registry

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")
register_kl = KL_ESTIMATORS.register

# exp() of a log-ratio beyond this bound overflows float32 gradients for no gain in signal.
_MAX_LOG_RATIO = 20.0


@register_kl("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π_θ - log π_ref."""
    return logprobs - ref_logprobs


@register_kl("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log π_θ - log π_ref)^2 / 2."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = π_ref/π_θ - log(π_ref/π_θ) - 1 (log-ratio clamped to ±20 before exp)."""
    log_ratio = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(π_θ || π_ref) with the named estimator (k1, k2 or k3)."""
    return KL_ESTIMATORS.lookup(estimator)(logprobs, ref_logprobs)
