"""Tiny, deterministic models and tokenizers built locally, for tests and fast demos.

Nothing here touches a model hub: the tokenizer is character-level over printable ASCII plus the ChatML special
tokens, and the model is a randomly initialised Llama of a few layers.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the format SmolLM2-Instruct uses, without its default system prompt."""

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def make_tiny_tokenizer(chars: str | None = None) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer with a ChatML chat template.

    Args:
        chars: the characters of the vocabulary (default: printable ASCII). Unknown characters map to ``<unk>``.
    """
    chars = chars if chars is not None else string.printable
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + list(dict.fromkeys(chars)):
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def make_tiny_model(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM small enough to train in seconds on a CPU (fp32, eval mode)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def make_tiny_policy(
    seed: int = 0, chars: str | None = None, **model_kwargs
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny model and its tokenizer (over ``chars``, default printable ASCII), matched (vocab, eos, pad)."""
    tok = make_tiny_tokenizer(chars)
    model = make_tiny_model(
        len(tok), seed=seed, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **model_kwargs
    )
    return model, tok
