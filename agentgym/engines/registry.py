"""Engines by name: what ``TrainConfig.engine``, ``agentgym serve --engine`` and Ray rollout workers choose from.

``transformers`` and ``vllm`` are built in; :func:`register_engine` adds one (in every process that builds it: a
Ray worker process imports the module that registers it, e.g. through an env plugin).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

EngineFactory = Callable[..., Any]
"""``factory(model, tokenizer, *, seed) -> engine``: an engine that samples from ``model`` (or from a copy of its
weights, refreshed by ``engine.load_weights(state_dict)`` after each update)."""


def _transformers(model: torch.nn.Module, tokenizer: Any, *, seed: int = 0) -> Any:
    from agentgym.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model, tokenizer)


def _vllm(model: torch.nn.Module, tokenizer: Any, *, seed: int = 0) -> Any:
    from agentgym.engines.vllm_engine import VLLMEngine

    return VLLMEngine.from_model(model, tokenizer, seed=seed)


ENGINES: dict[str, EngineFactory] = {"transformers": _transformers, "vllm": _vllm}
"""name -> factory of every engine a run can name"""
_SHARES_MODULE = {"transformers"}
"""The engines that sample from the trainer's very module (LoRA and several adapters train with them)."""


def register_engine(name: str, factory: EngineFactory, *, shares_module: bool = False) -> None:
    """Make ``TrainConfig(engine=name)`` build its engine with ``factory(model, tokenizer, seed=...)``.

    ``shares_module``: the engine samples from the module it is given (as ``transformers`` does), so LoRA training
    works with it; otherwise it holds a copy and gets the full weights after each update.
    """
    if not name or not callable(factory):
        raise ValueError(f"register_engine needs a name and a callable factory, got {name!r}, {factory!r}")
    ENGINES[name] = factory
    if shares_module:
        _SHARES_MODULE.add(name)
    else:
        _SHARES_MODULE.discard(name)


def engine_names() -> tuple[str, ...]:
    """The names ``TrainConfig.engine`` can take."""
    return tuple(ENGINES)


def check_engine_name(name: str) -> None:
    """Raise ``ValueError`` unless an engine is registered as ``name``."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r} (agentgym.engines.register_engine "
                         "adds one)")


def engine_by_name(name: str, model: torch.nn.Module, tokenizer: Any, seed: int = 0) -> Any:
    """The engine registered as ``name`` over ``model``."""
    check_engine_name(name)
    return ENGINES[name](model, tokenizer, seed=seed)


def shares_module(name: str) -> bool:
    """Whether engine ``name`` samples from the very module it is given (so LoRA and adapters train with it)."""
    return name in _SHARES_MODULE
