"""The build step: a :class:`~agentgym.training.train_config.TrainConfig` becomes the parts a run is made of.

Each function builds one part from the config and the parts before it, in this order::

    policy -> value head, reference copy, optimizer -> engine -> sampling params, context limit
           -> collector (local, or Ray workers) -> episode token budget

:class:`~agentgym.training.trainer.Trainer` calls them and then only orders collect -> batch -> advantages -> update ->
push. Engines are chosen by name (``TrainConfig.engine``) from the registry of :mod:`agentgym.engines.registry`
(``agentgym.engines.register_engine`` extends it); Ray rollout workers build theirs through the same registry.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch

from agentgym import engines
from agentgym.rollout.collector import context_limit, env_factory

__all__ = ["collector", "context_limit", "engine", "env_factory", "episode_tokens", "optimizer", "policy",
           "reference", "sampling_params", "value_head"]

if TYPE_CHECKING:
    from agentgym.algos import AlgoConfig
    from agentgym.engines import SamplingParams
    from agentgym.training.policy import ValueHead
    from agentgym.training.train_config import TrainConfig


# -- the policy and what trains with it ----------------------------------------------------------------------------
def policy(cfg: TrainConfig, model: Any = None, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """The policy to train: ``model`` or ``cfg.model`` loaded, with LoRA (``cfg.lora_rank``) or several LoRA
    adapters (``cfg.lora_adapters``), in eval mode (no dropout: engine and trainer compute one distribution)."""
    if model is None:
        from agentgym.models import load_model

        model, tokenizer = load_model(cfg.model)
    if tokenizer is None:
        raise ValueError("pass the tokenizer together with the model")
    model.eval()
    if cfg.lora_adapters:
        if cfg.lora_rank <= 0 or cfg.trainer_procs > 1 or cfg.rollout_workers > 0:
            raise ValueError(
                "lora_adapters needs lora_rank > 0, one trainer process and in-process rollouts (its adapters "
                f"share the engine); got lora_rank={cfg.lora_rank}, trainer_procs={cfg.trainer_procs}, "
                f"rollout_workers={cfg.rollout_workers}"
            )
        from agentgym.training.adapters import add_adapters

        model = add_adapters(model, cfg.lora_adapters, cfg.lora_rank, cfg.lora_alpha)
    elif cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                 target_modules="all-linear"))
    return model, tokenizer


def value_head(algo: AlgoConfig, model: torch.nn.Module) -> ValueHead | None:
    """PPO's value head on the policy's last hidden state (None for algorithms without a critic)."""
    from agentgym.training.policy import ValueHead, hidden_size

    return ValueHead(hidden_size(model)) if algo.needs_values else None


def reference(cfg: TrainConfig, algo: AlgoConfig, model: torch.nn.Module) -> torch.nn.Module | None:
    """A frozen copy of the initial policy for the KL penalty; None when the algorithm has none, or with LoRA (the
    base model with its adapters disabled is the reference)."""
    if not algo.needs_ref_logprobs or cfg.lora_rank > 0:
        return None
    return copy.deepcopy(model).requires_grad_(False)


def optimizer(cfg: TrainConfig, model: torch.nn.Module, head: torch.nn.Module | None) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable weights (``cfg.lr``) and the value head's (``cfg.value_lr``); the fused
    kernel where every parameter allows it (one pass over each parameter, no temporary copies)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.value_lr})
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                                 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))


# -- sampling ------------------------------------------------------------------------------------------------------
def engine(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any) -> Any:
    """The engine ``cfg.engine`` names, sampling from the trainer's ``model``.

    ``transformers`` shares the module (no weight copy); ``vllm`` starts vLLM from a saved copy of the module and
    takes the trainer's weights after each update (:meth:`Trainer.engine_weights_changed`).
    """
    cfg.check(env=False)  # the env is checked where it is built (agentgym.make), if this run builds one
    if not engines.shares_module(cfg.engine) and (cfg.lora_rank > 0 or cfg.rollout_workers > 0):
        raise ValueError(
            f"engine {cfg.engine} trains all weights with in-process rollouts; got lora_rank={cfg.lora_rank}, "
            f"rollout_workers={cfg.rollout_workers} (use engine transformers for those)"
        )
    return engines.engine_by_name(cfg.engine, model, tokenizer, seed=cfg.seed)


def sampling_params(cfg: TrainConfig) -> SamplingParams:
    """The rollouts' sampling parameters (the trainer's logprobs use the same temperature, top-k and top-p)."""
    return engines.SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens)


def collector(cfg: TrainConfig, algo: AlgoConfig, engine: Any, params: SamplingParams, tokenizer: Any,
              max_context_tokens: int, model: torch.nn.Module | None = None,
              weights: Callable[[], dict[str, torch.Tensor]] | None = None) -> Any:
    """Where a run's episodes come from: ``groups_per_iteration`` groups of ``algo.group_size`` episodes of
    ``cfg.env`` per collection, rolled out by ``engine`` in this process (:class:`~agentgym.rollout.collector.Collector`),
    or with ``cfg.rollout_workers`` > 0 on that many Ray actors (:class:`~agentgym.rollout.ray_workers.RayCollector`: on
    the main process only; they rebuild ``model``'s architecture with ``cfg.engine`` and start from ``weights()``).
    """
    from agentgym.training import distributed

    if cfg.rollout_workers > 0 and distributed.is_main_process():
        from agentgym.models import policy_spec
        from agentgym.rollout.ray_workers import RayCollector, WorkerConfig

        if model is None or weights is None:
            raise ValueError("rollout_workers > 0 needs the policy model and its weights")
        config = WorkerConfig(env=cfg.env, policy=policy_spec(model, tokenizer), params=params,
                              group_size=algo.group_size, env_kwargs=dict(cfg.env_kwargs),
                              max_context_tokens=cfg.max_context_tokens, env_threads=cfg.env_threads,
                              engine=cfg.engine)
        return RayCollector(config, cfg.rollout_workers, cfg.groups_per_iteration, weights=weights())
    from agentgym.rollout.collector import Collector

    return Collector(env_factory(cfg.env, cfg.env_kwargs, tokenizer, engine, max_context_tokens), engine, params,
                     num_groups=cfg.groups_per_iteration, group_size=algo.group_size, num_threads=cfg.env_threads)


def episode_tokens(cfg: TrainConfig, algo: AlgoConfig, custom_collector: Any = None) -> AlgoConfig:
    """``algo`` with its episode token budget set (Dr. GRPO's normalizer, DAPO's overlong limit) when it has none:
    ``max_new_tokens`` x the env's ``max_turns``, as ``make`` would build it (a custom collector's first env when
    the run brings its own)."""
    if algo.max_tokens is not None:
        return algo
    turns = None
    if custom_collector is None:
        from agentgym.registration import declared

        turns = declared(cfg.env, "max_turns", cfg.env_kwargs)
    else:
        envs = getattr(getattr(custom_collector, "venv", None), "envs", None) or [None]
        turns = getattr(getattr(envs[0], "env", None), "max_turns", None)
    return dataclasses.replace(algo, max_tokens=cfg.max_new_tokens * int(turns or 1))
