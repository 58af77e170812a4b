"""The server's protocol: what a request may hold, checked field by field, and the errors it is answered with.

Each check raises :class:`RequestError` with the OpenAI-style ``param`` it is about; the routes answer it as
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentgym.engines.base import SamplingParams

if TYPE_CHECKING:
    from fastapi import Request

    from agentgym.engines.base import Completion

@dataclass
class RequestInfo:
    """What a handler learns about the HTTP request besides the prompt ids and sampling parameters."""

    endpoint: str
    """``"chat.completions"`` or ``"completions"``."""
    model: str
    body: dict
    """The parsed JSON body."""
    headers: dict[str, str]
    messages: list[dict] | None = None
    """Chat requests: the messages as sent."""
    tools: list[dict] | None = None
    """Chat requests: the tools as sent (``None`` when absent or ``tool_choice`` is ``"none"``)."""
    cache_key: str | None = None
    episode: str | None = None
    """The episode the URL names (``/episodes/{episode}/v1/...``); None under ``/v1/...``."""


Handler = Callable[[list[int], SamplingParams, RequestInfo], "Completion | list[Completion]"]
"""``handler(prompt_ids, params, info)`` returns the ``params.n`` completions of one prompt (or one Completion)."""

EpisodeCheck = Callable[[str | None, dict[str, str]], None]
"""``check_episode(episode, headers)``: raises :class:`RequestError` to refuse a request (``episode`` is the one its
URL names, or None; header names are lowercase)."""

ErrorHook = Callable[[str | None, dict[str, str], "RequestError"], None]
"""``on_error(episode, headers, error)``: told of an error answer to a request (``episode`` as for
:data:`EpisodeCheck`)."""

EPISODE_PATH = re.compile(r"^/episodes/([^/]+)(/v1(?:/.*)?)$")
"""A per-episode path: ``/episodes/{episode}`` in front of the usual ``/v1/...`` path."""
_EPISODE_SCOPE_KEY = "agentgym.episode"


class RequestError(Exception):
    """A client error: answered with an OpenAI-style error body and the given status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def _field(body: dict, name: str, kinds: type | tuple, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise RequestError(f"'{name}' must be {_kind_name(kinds)}, got {value!r}.", param=name)
    if not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {_kind_name(kinds)}, got {value!r:.80}.", param=name)
    return value


def _kind_name(kinds: type | tuple) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if set(kinds) == {int, float}:
        return "a number"
    names = {
        int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list", dict: "an object"
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


MIN_TEMPERATURE = 1e-6
"""The smallest positive ``temperature`` accepted (0 is greedy decoding)."""
MIN_TOP_P = 1e-6
"""The smallest positive ``top_p`` accepted (any ``top_p`` this small keeps only the most likely token)."""

_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1}
"""Sampling options the engines do not implement, accepted only at their neutral values."""


def sampling_params(body: dict, prompt_len: int, default_max: int, chat: bool, *, max_model_len: int | None,
                    max_n: int, special_tokens: dict[str, int], eos_token_ids: list[int]) -> SamplingParams:
    """The engine's sampling parameters for a request ``body`` whose prompt is ``prompt_len`` tokens; every option
    checked (a :class:`RequestError` names the first bad one). ``special_tokens``: the tokenizer's, by text."""
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and value != neutral:
            raise RequestError(
                f"'{name}' is not supported by this server; leave it out or at {neutral}.", param=name
            )
    if body.get("logit_bias"):
        raise RequestError("'logit_bias' is not supported by this server.", param="logit_bias")
    if body.get("echo"):
        raise RequestError("'echo' is not supported by this server.", param="echo")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise RequestError(
            "Only the text 'response_format' is supported by this server: replies are sampled freely, not "
            "constrained to a JSON schema. Leave out the agent's structured output (AutoGen: "
            "output_content_type; OpenAI Agents SDK: output_type; CrewAI: output_pydantic / output_json or "
            "LLM(response_format=...)) and parse the text reply, or have the agent answer through a tool call.",
            param="response_format",
        )
    max_len = max_model_len
    if max_len is not None and prompt_len >= max_len:
        raise RequestError(
            f"The prompt is {prompt_len} tokens; this model's context is {max_len} tokens, which must also hold "
            "at least one new token. Shorten the prompt.",
            param="messages" if chat else "prompt", code="context_length_exceeded",
        )
    room = None if max_len is None else max_len - prompt_len
    max_tokens = _field(body, "max_completion_tokens", int) if chat else None
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", int)
    if max_tokens is None:
        max_tokens = default_max if room is None else min(default_max, room)
    elif max_tokens < 1:
        raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}.", param="max_tokens")
    elif room is not None and max_tokens > room:
        raise RequestError(
            f"'max_tokens' is {max_tokens}, but the prompt takes {prompt_len} of this model's {max_len} context "
            f"tokens: ask for at most {room}.", param="max_tokens", code="context_length_exceeded",
        )
    n = _field(body, "n", int, 1)
    if not 1 <= n <= max_n:
        raise RequestError(f"'n' must be between 1 and {max_n}, got {n}.", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise RequestError("'stop' must be a non-empty string or a list of them.", param="stop")
    stop_ids = _field(body, "stop_token_ids", list)
    if stop_ids is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise RequestError("'stop_token_ids' must be a list of integers.", param="stop_token_ids")
    # Decoded text leaves special tokens out, so a stop string that is one special token (e.g. "<|im_end|>")
    # becomes a stop token.
    special_stops = [special_tokens[s] for s in stop or [] if s in special_tokens]
    stop = [s for s in stop or [] if s not in special_tokens] or None
    if special_stops:
        base = stop_ids if stop_ids is not None else eos_token_ids
        stop_ids = list(dict.fromkeys(list(base) + special_stops))
    top_k = _field(body, "top_k", int, 0)
    seed = _field(body, "seed", int)
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise RequestError(f"'seed' must be an integer in [-2**63, 2**64), got {seed}.", param="seed")
    temperature = float(_field(body, "temperature", (int, float), 1.0))
    top_p = float(_field(body, "top_p", (int, float), 1.0))
    # Below these, float32 logits / temperature overflow and top-p's threshold rounds to 0: NaN logprobs.
    if 0 < temperature < MIN_TEMPERATURE:
        raise RequestError(
            f"'temperature' must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {temperature!r}.",
            param="temperature",
        )
    if 0 < top_p < MIN_TOP_P:
        raise RequestError(f"'top_p' must be in [{MIN_TOP_P:g}, 1], got {top_p!r}.", param="top_p")
    try:
        return SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=0 if top_k == -1 else top_k,  # -1 is vLLM's spelling of "no top-k"
            max_new_tokens=max_tokens,
            stop_token_ids=stop_ids,
            stop=stop,
            seed=seed,
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """Special tokens by their text: the ones decoding with ``skip_special_tokens=True`` leaves out."""
    out = {t.content: int(i) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
           if getattr(t, "special", False)}
    for text in getattr(tokenizer, "all_special_tokens", None) or []:
        out.setdefault(text, int(tokenizer.convert_tokens_to_ids(text)))
    return out


MAX_NESTING = 64
"""The deepest nesting of objects and lists a request body may have."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:
        raise RequestError(f"The request body is not valid JSON: it nests deeper than {MAX_NESTING} levels.") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, bytes that are not UTF-8, a 5000-digit int
        raise RequestError(f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    _check_text(body)
    return body


def _check_text(body: dict) -> None:
    """Reject a body holding text that is not valid Unicode (a lone surrogate) or nesting past ``MAX_NESTING``.

    JSON lets a string escape a lone surrogate (``"\\ud800"``), and ``json.loads`` keeps it; no tokenizer can encode
    it, and a reply cannot echo it as UTF-8. Every string (keys too) is checked, tokenized or not, so that a body is
    accepted or rejected as a whole.
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            match = _SURROGATE.search(value)
            if match:
                raise RequestError(
                    f"'{where}' is not valid Unicode: it holds a lone surrogate (U+{ord(match.group()):04X}) at "
                    f"character {match.start()}. Send text as UTF-8; in JSON a \\uD800-\\uDFFF escape must be "
                    "one half of a surrogate pair.", param=re.split(r"[.\[]", where, maxsplit=1)[0],
                )
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_NESTING:
            raise RequestError(f"The request body nests deeper than {MAX_NESTING} levels (at '{where}').")
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        for key, item in reversed(items):  # reversed: the first bad string in the body is the one reported
            if isinstance(key, str):
                match = _SURROGATE.search(key)
                if match:
                    raise RequestError(
                        f"A key of the request body{f' under {where!r}' if where else ''} is not valid Unicode: it "
                        f"holds a lone surrogate (U+{ord(match.group()):04X}). Send text as UTF-8."
                    )
                path = f"{where}.{key}" if where else key
            else:
                path = f"{where}[{key}]"
            stack.append((item, path, depth + 1))


def _include_usage(body: dict) -> bool:
    """Whether a stream ends with a usage chunk (``stream_options.include_usage``); checked before generating."""
    options = _field(body, "stream_options", dict, {})
    return bool(body.get("stream")) and bool(options.get("include_usage"))


def _cache_key(body: dict) -> str | None:
    key = body.get("cache_key")
    if key is not None and not isinstance(key, str):
        raise RequestError("'cache_key' must be a string.", param="cache_key")
    return key
