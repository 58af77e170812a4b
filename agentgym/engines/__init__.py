"""Inference engines: sampled token ids with the exact logprobs the trainer needs.

- :class:`TransformersEngine`: in-process transformers model on CPU or one GPU (the default); shares the
  trainer's module, keeps multi-turn contexts under cache keys.
- :class:`VLLMEngine`: vLLM on a CUDA GPU (``pip install 'agentgym[vllm]'``).
- :mod:`agentgym.engines.server`: an OpenAI-compatible HTTP server in front of either.
"""

from agentgym.engines.base import Completion, Engine, FinishReason, SamplingParams, sampled_logprobs
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
    "sampled_logprobs",
]
