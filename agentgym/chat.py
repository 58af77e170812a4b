"""Incremental tokenization of a conversation through a tokenizer's chat template.

The policy's sampled ids are never re-tokenized: each new observation is the part of the template's rendering that
follows the assistant's content, tokenized on its own. For templates that render every earlier turn the same way
whatever follows (ChatML, which SmolLM2 uses, Llama 3, Mistral, ...) and whose turn boundaries are special tokens,
``prompt_ids + action_1 + obs_1 + action_2 + ...`` equals the template's tokenization of the whole conversation,
provided the policy's ids are the canonical tokenization of its text. Where that cannot hold:

- the policy sampled a non-canonical tokenization of its text (say ``"he"+"llo"`` where the tokenizer would emit
  ``"hello"``): we keep the sampled ids, so the row differs from a re-tokenization, by design;
- the template rewrites earlier turns (drops past reasoning, trims content): the text rendered for the earlier turns
  is no longer a prefix of the new rendering. :meth:`ChatTemplate.continuation_ids` then tokenizes what follows the
  longest common prefix and reports ``prefix_stable=False`` so the mismatch can be counted;
- the template inserts text before the assistant's content (e.g. an empty reasoning block): it is not in the ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

_SENTINEL = "\x00agentgym-action\x00"


def _ids(encoded: Any) -> list[int]:
    """Token ids from what ``apply_chat_template`` / ``__call__`` returns across transformers versions."""
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return [int(i) for i in encoded]


@dataclass
class Continuation:
    """What follows an assistant turn: the assistant's text and the ids the environment appends."""

    assistant_text: str
    obs_ids: list[int]
    prefix_stable: bool


def render_messages(tokenizer: Any, messages: Sequence[dict], tools: list[dict] | None = None,
                    add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
    """The text ``tokenizer``'s chat template renders for ``messages`` (and ``tools``): the one place a chat template
    is applied, for environments (:class:`ChatTemplate`) and for the server's chat requests alike."""
    if tools:
        template_kwargs["tools"] = tools
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)


class ChatTemplate:
    """Renders chat messages to token ids incrementally, through ``tokenizer.apply_chat_template``.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        tools: tool schemas passed to the template (OpenAI function format), if any.
        template_kwargs: extra variables for the template.
    """

    def __init__(self, tokenizer: Any, tools: list[dict] | None = None, **template_kwargs: Any):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the tokenizer has no chat template; set tokenizer.chat_template (e.g. agentgym.tiny.CHATML_TEMPLATE)"
            )
        self.tokenizer = tokenizer
        self.tools = tools
        self.template_kwargs = template_kwargs
        self.stop_token_ids = stop_token_ids(tokenizer)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """The template's text for ``messages``."""
        return render_messages(self.tokenizer, messages, self.tools, add_generation_prompt, **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of template text (special tokens in the text are parsed, none is added)."""
        return _ids(self.tokenizer(text, add_special_tokens=False))

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Ids of the whole prompt, generation prompt included."""
        return self.encode(self.render(messages, add_generation_prompt=True))

    def split_action(self, action_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Split the policy's ids into its content and the trailing stop tokens that closed its turn."""
        ids = [int(i) for i in action_ids]
        end = len(ids)
        while end > 0 and ids[end - 1] in self.stop_token_ids:
            end -= 1
        return ids[:end], ids[end:]

    def action_text(self, action_ids: Sequence[int]) -> str:
        """The assistant's message content for the policy's ids (trailing stop tokens removed)."""
        content, _ = self.split_action(action_ids)
        return self.tokenizer.decode(content, skip_special_tokens=False)

    def continuation_ids(
        self, messages: Sequence[dict], action_ids: Sequence[int], new_messages: Sequence[dict], done: bool = False
    ) -> Continuation:
        """Ids the environment appends after the policy's ``action_ids``.

        Args:
            messages: the conversation before the action (what the prompt rendered).
            action_ids: the ids the policy sampled, possibly ending with a stop token.
            new_messages: the messages that follow the assistant's reply.
            done: the episode is over, so no generation prompt is appended.
        """
        content_ids, closing_ids = self.split_action(action_ids)
        text = self.tokenizer.decode(content_ids, skip_special_tokens=False)
        before = self.render(messages, add_generation_prompt=True)
        # A sentinel stands in for the content: the template may trim or escape content, never a sentinel.
        after_msgs = [*messages, {"role": "assistant", "content": _SENTINEL}, *new_messages]
        full = self.render(after_msgs, add_generation_prompt=not done)
        stable = full.startswith(before)
        if not stable:
            before = before[: len(os.path.commonprefix([before, full]))]
        tail = full[len(before) :]
        at = tail.find(_SENTINEL)
        obs_text = tail[at + len(_SENTINEL) :] if at >= 0 else tail
        closing = self.tokenizer.decode(closing_ids, skip_special_tokens=False) if closing_ids else ""
        if closing and obs_text.startswith(closing):
            obs_text = obs_text[len(closing) :]
        return Continuation(text, self.encode(obs_text), stable and at >= 0)


def stop_token_ids(tokenizer: Any) -> set[int]:
    """Ids that end an assistant turn: eos and, for ChatML templates, ``<|im_end|>``."""
    out: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        out.add(eos)
    elif isinstance(eos, (list, tuple)):
        out.update(int(e) for e in eos)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if isinstance(tid, int):
            out.add(tid)
    return out
