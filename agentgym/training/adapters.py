"""Several LoRA adapters on one base model, one per trainable policy (e.g. the werewolves and the seer).

Every adapter trains in the same run and shares the base weights and the engine. A row of the batch trains the
adapter of the policy that sampled it; the engine samples each policy's seats with that policy's adapter
(:class:`AdapterEngine`). peft makes only the active adapter ``requires_grad``; :func:`use_adapter` keeps every
adapter trainable, so one optimizer holds them all and checkpoints save them all (an adapter no row used gets no
gradient and AdamW leaves it as it is).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def add_adapters(model: Any, names: Sequence[str], rank: int, alpha: int) -> Any:
    """Wrap ``model`` in a peft model with one LoRA adapter (all linear layers) per name, the first one active."""
    from peft import LoraConfig, get_peft_model

    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"adapter names must be distinct and at least one, got {names}")
    if rank <= 0:
        raise ValueError(f"LoRA adapters need lora_rank > 0, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear")
    peft_model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    use_adapter(peft_model, names[0])
    return peft_model


def lora_parameters(model: Any) -> list[torch.nn.Parameter]:
    """The parameters of every LoRA adapter of ``model``."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def adapter_parameters(model: Any, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of adapter ``name``, by their names in ``model``."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n and f".{name}." in n}


def use_adapter(model: Any, name: str) -> None:
    """Make ``name`` the adapter the model's forward uses; every adapter stays trainable."""
    if model.active_adapter != name:
        model.set_adapter(name)
    for p in lora_parameters(model):
        p.requires_grad_(True)


class AdapterEngine:
    """An engine that answers one policy with its adapter: activates it, then asks the shared engine.

    The shared engine must sample from the very peft module the trainer trains (the trainer's default engine does).
    Calls are serial (the collectors batch one policy at a time), so switching the active adapter is safe.
    """

    def __init__(self, engine: Any, model: Any, adapter: str):
        if getattr(engine, "model", None) is not model:
            raise ValueError("AdapterEngine needs an engine that samples from the trained peft model itself")
        if adapter not in model.peft_config:
            raise KeyError(f"no adapter {adapter!r}; the model has {sorted(model.peft_config)}")
        self.engine, self.model, self.adapter = engine, model, adapter

    def generate(self, prompts: Any, params: Any = None, cache_keys: Any = None) -> Any:
        use_adapter(self.model, self.adapter)
        keys = None if cache_keys is None else [self._key(k) for k in cache_keys]
        return self.engine.generate(prompts, params, cache_keys=keys)

    def release(self, cache_key: str) -> None:
        self.engine.release(self._key(cache_key))

    def _key(self, cache_key: str) -> str:
        # A context kept under one adapter is never reused under another.
        return f"{self.adapter}/{cache_key}"

    def __getattr__(self, name: str) -> Any:  # clear_cache, tokenizer, max_model_len, ...
        return getattr(self.engine, name)
