"""Inference engines: sampled token ids with the exact logprobs the trainer needs.

- :class:`TransformersEngine`: in-process transformers model on CPU or one GPU (the default); shares the
  trainer's module, keeps multi-turn contexts under cache keys.
- :class:`VLLMEngine`: vLLM on a CUDA GPU (``pip install 'agentgym[vllm]'``).
- :mod:`agentgym.engines.registry`: engines by name (``register_engine`` adds one).
- :mod:`agentgym.engines.server`: an OpenAI-compatible HTTP server in front of either.
"""

from agentgym.engines.base import Completion, Engine, FinishReason, SamplingParams, sampled_logprobs
from agentgym.engines.registry import (
    check_engine_name,
    engine_by_name,
    engine_names,
    register_engine,
    shares_module,
)
from agentgym.engines.transformers_engine import TransformersEngine
from agentgym.engines.vllm_engine import VLLMEngine, VLLMUnavailableError

__all__ = [
    "Completion",
    "Engine",
    "FinishReason",
    "SamplingParams",
    "TransformersEngine",
    "VLLMEngine",
    "VLLMUnavailableError",
    "check_engine_name",
    "engine_by_name",
    "engine_names",
    "register_engine",
    "sampled_logprobs",
    "shares_module",
]
