"""Loss aggregation: how per-token losses l_{i,t} become one scalar, independent of micro-batching.

With m_{i,t} = loss_mask, n_i = sum_t m_{i,t} (policy tokens of row i), over the rows i of a minibatch:

    token-mean                 sum_{i,t} m l / N_tok                       (DAPO)
    seq-mean-token-mean        sum_i (sum_t m l / n_i) / N_seq             (GRPO, GSPO)
    seq-mean-token-sum         sum_i (sum_t m l) / N_seq                   (RLOO: a sequence is one action)
    seq-mean-token-sum-norm    sum_i (sum_t m l) / (N_seq * max_tokens)    (Dr. GRPO's constant normalizer)

N_tok (policy tokens) and N_seq (rows with a policy token) are counted once over the whole minibatch by
`loss_normalizer` and passed to every micro-batch, so the sum of micro-batch losses equals the minibatch loss (and so
do the gradients) however the rows are split. A sequence is a row: a whole episode when its turns were merged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tensordict import TensorDict
from torch import Tensor

from agentgym.algos.config import AlgoConfig
from agentgym.algos.episodes import require_keys
from agentgym.algos.registry import Registry


@dataclass(frozen=True)
class LossNormalizer:
    """Denominators counted once over a minibatch, shared by all of its micro-batches."""

    num_tokens: float
    """N_tok: policy tokens in the minibatch (at least 1)"""
    num_sequences: float
    """N_seq: rows of the minibatch with at least one policy token (at least 1)"""
    max_tokens: float
    """Dr. GRPO's constant: cfg.max_tokens, or the minibatch's padded length T when that is None"""


def loss_normalizer(minibatch: TensorDict, cfg: AlgoConfig) -> LossNormalizer:
    """Count the aggregation denominators of `minibatch` (call once per minibatch, before splitting it)."""
    require_keys(minibatch, ("loss_mask",), "loss normalizers count policy tokens")
    mask = minibatch["loss_mask"].bool()
    num_tokens = float(mask.sum().item())
    num_sequences = float(mask.any(dim=-1).sum().item())
    max_tokens = float(cfg.max_tokens if cfg.max_tokens is not None else mask.shape[-1])
    return LossNormalizer(max(num_tokens, 1.0), max(num_sequences, 1.0), max(max_tokens, 1.0))


AggregateFn = Callable[[Tensor, Tensor, LossNormalizer], Tensor]
AGGREGATIONS: Registry[AggregateFn] = Registry("loss aggregation")
register_aggregation = AGGREGATIONS.register


@register_aggregation("token-mean")
def token_mean(values: Tensor, mask: Tensor, norm: LossNormalizer) -> Tensor:
    """sum_{i,t} m l / N_tok: every policy token weighs the same."""
    return (values * mask).sum() / norm.num_tokens


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, norm: LossNormalizer) -> Tensor:
    """sum_i (sum_t m l / n_i) / N_seq: every sequence weighs the same, its tokens share its weight."""
    per_row = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_row.sum() / norm.num_sequences


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(values: Tensor, mask: Tensor, norm: LossNormalizer) -> Tensor:
    """sum_i (sum_t m l) / N_seq: every token weighs the same within the per-sequence sum."""
    return (values * mask).sum() / norm.num_sequences


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values: Tensor, mask: Tensor, norm: LossNormalizer) -> Tensor:
    """sum_{i,t} m l / (N_seq * max_tokens): Dr. GRPO's length-unbiased constant normalizer."""
    return (values * mask).sum() / (norm.num_sequences * norm.max_tokens)


def aggregate(values: Tensor, mask: Tensor, mode: str, normalizer: LossNormalizer) -> Tensor:
    """Aggregate per-token `values` [b, T] over the policy tokens in `mask` with the named mode."""
    mask = mask.bool()
    # where(), not a product: padding may hold inf/nan (e.g. -inf logprobs) and must not leak into the sum.
    values = values.masked_fill(~mask, 0.0)
    return AGGREGATIONS.lookup(mode)(values, mask.to(values.dtype), normalizer)
