"""Critics for prompt optimization (:mod:`agentgym.training.apo`): they read failed episodes and propose rewritten
system prompts.

A critic is anything with ``propose(prompt, failures, num, seed) -> list[str]`` (:class:`Critic`), a plain callable
``fn(prompt, failures) -> str | list[str]`` (:class:`FunctionCritic`), or a chat model behind :class:`ChatCritic`:
an engine (:class:`EngineChat`) or an OpenAI-compatible endpoint (:class:`OpenAIChat`). :func:`transcript` is how
an episode is shown to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from agentgym.message_env import Message

_EPISODE_INFO_KEYS = {"success", "messages", "action_text", "prefix_stable", "turn", "context_tokens", "text"}
"""Keys the wrappers add to an episode's final info; the env's own keys (e.g. the answer) are shown to the critic."""


def transcript(episode: Any, max_chars: int = 1200) -> str:
    """An episode as text for the critic: its messages after the system prompt, and how it ended."""
    messages = episode.info.get("messages") or []
    lines = [f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages if m.get("role") != "system"]
    outcome = {k: v for k, v in episode.info.items()
               if k not in _EPISODE_INFO_KEYS and isinstance(v, (str, int, float, bool))}
    status = "succeeded" if episode.success else "failed"
    extra = "".join(f", {k}={v}" for k, v in outcome.items())
    text = "\n".join(lines)
    if len(text) > max_chars:  # keep the start (the task) and the end (how it went wrong)
        half = max(1, max_chars // 2)
        text = text[:half] + "\n[...]\n" + text[-half:]
    return f"{text}\noutcome: {status}, reward {episode.total_reward:g}{extra}"


# -- critics --------------------------------------------------------------------------------------------------------
@runtime_checkable
class Critic(Protocol):
    """Proposes rewritten system prompts from failed episodes."""

    def propose(self, prompt: str | None, failures: Sequence[str], num: int, seed: int) -> list[str]:
        """Up to ``num`` new system prompts, given the current one (None: no system prompt) and the transcripts
        of episodes it failed."""
        ...


class FunctionCritic:
    """A critic from a plain callable ``fn(prompt, failures) -> str | list[str]`` (scripted critics, tests)."""

    def __init__(self, fn: Callable[[str | None, list[str]], str | Sequence[str]]):
        self.fn = fn

    def propose(self, prompt: str | None, failures: Sequence[str], num: int, seed: int) -> list[str]:
        out = self.fn(prompt, list(failures))
        return [out] if isinstance(out, str) else list(out)[:num]


CRITIC_SYSTEM = (
    "You improve the system prompt of an AI assistant. You are shown its current system prompt and conversations "
    "in which it failed its task. Write a better system prompt: clear instructions that would have made it succeed. "
    "Reply with the new system prompt only, between <prompt> and </prompt>."
)
"""The critic's instructions."""

_PROMPT_TAG = re.compile(r"<prompt>(.*?)(?:</prompt>|$)", re.DOTALL | re.IGNORECASE)


def critic_messages(prompt: str | None, failures: Sequence[str]) -> list[Message]:
    """The chat the critic model reads: instructions, the current prompt, the failed episodes."""
    shown = "(no system prompt)" if prompt is None else prompt
    parts = [f"Current system prompt:\n<prompt>{shown}</prompt>", "Conversations where the assistant failed:"]
    parts += [f"--- conversation {i} ---\n{t}" for i, t in enumerate(failures, 1)]
    parts.append("Write the improved system prompt between <prompt> and </prompt>.")
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_proposal(reply: str, max_chars: int = 1000) -> str | None:
    """The new prompt in a critic's reply: the text between <prompt> tags, else the whole reply (stripped, at most
    ``max_chars``); None when nothing is left."""
    match = _PROMPT_TAG.search(reply)
    text = (match.group(1) if match else reply).strip()[:max_chars].strip()
    return text or None


ChatFn = Callable[[list[Message], int, int], list[str]]
"""``chat(messages, n, seed) -> n replies``."""


class EngineChat:
    """A chat model on an :class:`~agentgym.engines.Engine`: messages through the tokenizer's chat template.

    Args:
        engine: the engine (the policy's own serves as its critic).
        tokenizer: its tokenizer (with a chat template).
        temperature, max_new_tokens: sampling of the replies.
    """

    def __init__(self, engine: Any, tokenizer: Any, temperature: float = 0.8, max_new_tokens: int = 128):
        from agentgym.chat import ChatTemplate

        self.engine, self.tokenizer = engine, tokenizer
        self.chat = ChatTemplate(tokenizer)
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def fits(self, messages: list[Message]) -> bool:
        """Whether the prompt and a full reply fit the model's context."""
        limit = getattr(self.engine, "max_model_len", None)
        return limit is None or len(self.chat.prompt_ids(messages)) + self.max_new_tokens <= limit

    def __call__(self, messages: list[Message], n: int, seed: int) -> list[str]:
        from agentgym.engines import SamplingParams

        params = SamplingParams(n=n, temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=seed,
                                stop_token_ids=sorted(self.chat.stop_token_ids))
        out = self.engine.generate([self.chat.prompt_ids(messages)], params)
        return [self.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in out[0]]


class OpenAIChat:
    """A chat model behind an OpenAI-compatible endpoint (``agentgym serve``, vLLM, a hosted API).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server knows.
        api_key: the key (servers that need none accept any string).
        temperature, max_new_tokens: sampling of the replies.
        http_client: an ``httpx.Client`` for the openai client (tests pass one with a mock transport).
    """

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", temperature: float = 0.8,
                 max_new_tokens: int = 128, http_client: Any = None):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", http_client=http_client)
        self.model, self.temperature, self.max_new_tokens = model, temperature, max_new_tokens

    def fits(self, messages: list[Message]) -> bool:
        return True

    def __call__(self, messages: list[Message], n: int, seed: int) -> list[str]:
        replies = []
        for i in range(n):  # one request per reply: not every server implements n > 1
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature,
                max_tokens=self.max_new_tokens, seed=seed + i,
            )
            replies.append(resp.choices[0].message.content or "")
        return replies


class ChatCritic:
    """A critic that asks a chat model (``chat(messages, n, seed) -> replies``) to rewrite the prompt.

    When the conversation does not fit the model's context (``chat.fits``), fewer and shorter failures are shown.
    """

    def __init__(self, chat: ChatFn, max_prompt_chars: int = 1000):
        self.chat = chat
        self.max_prompt_chars = max_prompt_chars

    def propose(self, prompt: str | None, failures: Sequence[str], num: int, seed: int) -> list[str]:
        shown = list(failures)
        messages = critic_messages(prompt, shown)
        fits = getattr(self.chat, "fits", lambda m: True)
        while not fits(messages):
            if len(shown) > 1:
                shown = shown[:-1]
            elif shown and len(shown[0]) > 200:
                shown = [shown[0][: len(shown[0]) // 2]]
            else:
                raise ValueError("the critic's instructions and one failed episode do not fit its context; use a "
                                 "critic model with a longer context")
            messages = critic_messages(prompt, shown)
        replies = self.chat(messages, num, seed)
        out = [parse_proposal(r, self.max_prompt_chars) for r in replies]
        return [p for p in out if p is not None]


def as_critic(critic: Any) -> Critic:
    """A :class:`Critic` from a critic, or from a plain callable ``fn(prompt, failures)``."""
    if isinstance(critic, Critic):
        return critic
    if callable(critic):
        return FunctionCritic(critic)
    raise TypeError(f"a critic needs propose(prompt, failures, num, seed) or to be callable, got {type(critic)}")


__all__ = [
    "CRITIC_SYSTEM",
    "ChatCritic",
    "Critic",
    "EngineChat",
    "FunctionCritic",
    "OpenAIChat",
    "as_critic",
    "critic_messages",
    "parse_proposal",
    "transcript",
]
