"""An OpenAI-compatible HTTP server in front of any :class:`~agentgym.engines.Engine`.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming with
``"stream": true``, as server-sent events); ``POST /v1/responses`` (the Responses API) is answered with a 404 that
names each agent framework's setting for chat completions. Every response carries the exact token ids, as vLLM does with
``return_token_ids``: ``prompt_token_ids`` (top level; per choice too for completions) and ``choices[].token_ids``.
Logprobs of the sampled tokens come back on request (``logprobs``); they are the engine's
``log_softmax(logits / T)``. ``top_logprobs`` lists stay empty: engines report only the sampled token.

Extensions accepted in the request body (``extra_body`` in the ``openai`` client): ``top_k``, ``stop_token_ids``,
``seed`` and ``cache_key`` (keep the conversation's keys/values between calls; see ``Engine.generate``).

Tool calls: the request's ``tools`` go into the chat template when it renders them itself; otherwise a system
message lists them and asks for Hermes-style calls. The reply is parsed for calls in that format::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and each becomes an OpenAI ``tool_calls`` entry (``finish_reason`` ``"tool_calls"``); the text around them stays the
message content. Calls are parsed, not enforced: ``tool_choice`` ``"none"`` leaves the tools out, any other value
renders them. When a later request sends such a reply back unchanged (the same call ids, names, arguments and
content), it is rendered as the text the model generated, not re-rendered from its parts: the next prompt then
extends the previous prompt and reply token for token, whatever spacing the model gave its calls.

Concurrency: requests that reach the engine queue for one worker thread, which batches waiting requests with equal
sampling parameters into one ``generate`` call (requests with a ``seed`` run alone, so a seed reproduces its
completion). A ``handler`` passed to :func:`create_app` replaces the engine for every request and is called
concurrently from worker threads; it must be thread-safe. Streaming sends a completion token by token once it has
been generated whole.

Errors: every error answer is an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``: 400 for a
request that cannot be served as sent, 404 for an unknown model or path, 405 for a wrong method, and 500 only when
the server itself fails (the engine or a handler raised). No error closes the keep-alive connection.

Episode URLs: an app created with ``check_episode`` also serves every endpoint under ``/episodes/{episode}/v1/``, so
that a base URL alone (``http://127.0.0.1:PORT/episodes/ID/v1``) says which episode a call belongs to, whatever the
client. ``check_episode(episode, headers)`` sees each request first and may refuse it; the handler reads the episode
in ``RequestInfo.episode``. ``on_error`` is told of every error answer, with the episode its request named.

Text that is not valid Unicode is rejected, not replaced: a lone surrogate in any string of the body, keys included
(JSON can escape one, ``"\\ud800"``; no tokenizer can encode one), is a 400 that names the field, e.g.
``'messages[0].content' is not valid Unicode``. So are bodies that are not JSON text (UTF-8, or UTF-16/32), ``NaN``
and ``Infinity`` (not JSON numbers), integers of more than 4300 digits, and nesting deeper than :data:`MAX_NESTING`
levels. NUL, combining marks, bidirectional controls, noncharacters and every other code point are text like any
other. See docs/server.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentgym.engines.base import Completion, Engine, SamplingParams

try:
    from jinja2 import TemplateError
except ImportError:  # pragma: no cover - jinja2 comes with transformers' chat templates
    TemplateError = RuntimeError  # type: ignore[assignment,misc]

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - fastapi is a dependency of agentgym
    raise ImportError("The agentgym server needs fastapi and uvicorn: pip install fastapi uvicorn") from exc

logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------------------------------
# Batching the engine


@dataclass
class _Job:
    prompt: list[int]
    params: SamplingParams
    cache_key: str | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class EngineWorker:
    """One thread that owns the engine; waiting requests with equal sampling parameters share a batch."""

    def __init__(self, engine: Engine, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="agentgym-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, cache_key: str | None) -> concurrent.futures.Future:
        job = _Job(prompt, params, cache_key)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            pending = [job]
            while len(pending) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                pending.append(nxt)
            for batch in _batches(pending):
                self._execute(batch)

    def _execute(self, batch: list[_Job]) -> None:
        keys = [j.cache_key for j in batch]
        try:
            results = self.engine.generate(
                [j.prompt for j in batch], batch[0].params, cache_keys=keys if any(keys) else None
            )
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear about the failure
            for j in batch:
                j.future.set_exception(exc)
            return
        for j, r in zip(batch, results):
            j.future.set_result(r)


def _batches(jobs: list[_Job]) -> list[list[_Job]]:
    """Group jobs that can share one ``generate`` call: equal parameters, no seed, distinct (or no) cache keys."""
    groups: list[list[_Job]] = []
    for job in jobs:
        for group in groups:
            if (
                job.params.seed is None
                and group[0].params == job.params
                and (job.cache_key is None) == (group[0].cache_key is None)
                and (job.cache_key is None or all(j.cache_key != job.cache_key for j in group))
            ):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


# --------------------------------------------------------------------------------------------------------------------
# Chat rendering and tool calls

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tools_system_prompt(tools: list[dict]) -> str:
    """The system text that describes ``tools`` to a model whose chat template does not render them."""
    specs = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call functions to help with the request. Their signatures, one JSON object per line:\n"
        f"<tools>\n{specs}\n</tools>\n"
        "To call a function, reply with a JSON object holding its name and arguments between tags, one call per "
        'block:\n<tool_call>\n{"name": "function_name", "arguments": {"argument": "value"}}\n</tool_call>'
    )


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Split a reply into its content and OpenAI ``tool_calls`` (Hermes ``<tool_call>{json}</tool_call>`` blocks).

    Blocks whose JSON does not parse, or has no ``name``, stay in the content.
    """
    calls: list[dict] = []
    kept: list[str] = []
    last = 0
    for match in _TOOL_CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append({
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": obj["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
        })
        kept.append(text[last : match.start()])
        last = match.end()
    kept.append(text[last:])
    return "".join(kept).strip() if calls else text, calls


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise RequestError(
                    f"{where}: only text content parts are supported, got {part!r:.80}.", param="messages"
                )
        return "".join(parts)
    raise RequestError(f"{where}: content must be a string or a list of text parts.", param="messages")


def render_chat(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None,
    generated: Callable[[dict], str | None] | None = None,
) -> str:
    """The prompt text for ``messages`` (and ``tools``) through the tokenizer's chat template.

    ``generated(message)``: the text the model generated for an assistant message with tool calls, when the message
    is a reply this server gave (see :class:`ToolCallReplies`), or None; such a message is rendered as that text.
    """
    template = tokenizer.chat_template
    if not template:
        raise RequestError("This model's tokenizer has no chat template: use /v1/completions instead.")
    template = template if isinstance(template, str) else json.dumps(template)
    native_tools = "tools" in template
    native_calls = "tool_calls" in template
    rendered: list[dict] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'.", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise RequestError(f"messages[{i}] has unknown role {m['role']!r}.", param="messages")
        content = _text_content(m.get("content"), f"messages[{i}]")
        out: dict[str, Any] = {"role": role, "content": content}
        calls = m.get("tool_calls") or []
        if role == "assistant" and calls:
            _check_tool_calls(calls, f"messages[{i}].tool_calls")
            original = generated(m) if generated is not None else None
            if original is not None:
                out["content"] = original
            elif native_calls:
                out["tool_calls"] = calls
            else:
                blocks = []
                for call in calls:
                    fn = call["function"]
                    args = fn.get("arguments", "{}")
                    try:
                        args = json.loads(args) if isinstance(args, str) else args
                    except json.JSONDecodeError:
                        pass
                    call_json = json.dumps({"name": fn.get("name"), "arguments": args})
                    blocks.append(f"<tool_call>\n{call_json}\n</tool_call>")
                out["content"] = "\n".join([content] + blocks if content else blocks)
        if role == "tool":
            if native_calls:
                if "tool_call_id" in m:
                    if not isinstance(m["tool_call_id"], str):
                        raise RequestError(f"messages[{i}].tool_call_id must be a string.", param="messages")
                    out["tool_call_id"] = m["tool_call_id"]
            else:
                out["content"] = f"<tool_response>\n{content}\n</tool_response>"
        rendered.append(out)
    if tools and not native_tools:
        extra = tools_system_prompt(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + extra}
        else:
            rendered.insert(0, {"role": "system", "content": extra})
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
    if tools and native_tools:
        kwargs["tools"] = tools
    try:
        return tokenizer.apply_chat_template(rendered, **kwargs)
    except (TemplateError, TypeError, ValueError) as exc:
        # Templates check the conversation themselves (roles that alternate, a first system message, ...).
        raise RequestError(f"This model's chat template cannot render these messages: {exc}", param="messages") from exc


class ToolCallReplies:
    """The text the model generated for each recent reply that was parsed into tool calls, by call id.

    Clients send a reply back as its parts (content and ``tool_calls``), which a template cannot render into the
    model's own text: spacing inside a call, the order of its keys and the text between calls are lost. A reply
    that comes back unchanged is rendered as the generated text instead. Keeps the latest ``capacity`` replies.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._by_id: OrderedDict[str, tuple[tuple, str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, content: str | None, calls: list[dict], text: str) -> None:
        """Keep ``text``, the generated reply that the server sent as ``content`` and ``calls``."""
        key = _calls_key(calls)
        with self._lock:
            self._by_id[calls[0]["id"]] = (key, content or "", text)
            while len(self._by_id) > self.capacity:
                self._by_id.popitem(last=False)

    def generated(self, message: dict) -> str | None:
        """The generated text of ``message``, an assistant message with tool calls, if it is a kept reply as sent."""
        calls = message.get("tool_calls") or []
        first = calls[0].get("id") if calls and isinstance(calls[0], dict) else None
        with self._lock:
            kept = self._by_id.get(first) if isinstance(first, str) else None
        if kept is None:
            return None
        key, content, text = kept
        try:
            same = _calls_key(calls) == key and _text_content(message.get("content"), "") == content
        except (RequestError, TypeError, AttributeError):
            return None
        return text if same else None


def _calls_key(calls: list[dict]) -> tuple:
    """What identifies a list of tool calls: each call's id, name and arguments (as JSON values)."""
    key = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        key.append((call.get("id"), fn.get("name"), json.dumps(args, sort_keys=True)))
    return tuple(key)


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise RequestError(f"{where} must be a list of tool calls.", param="messages")
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(
                f'{where}[{k}] must be an object like {{"type": "function", "function": {{"name": "...", '
                f'"arguments": "{{...}}"}}}}, got {call!r:.80}.', param="messages",
            )


# --------------------------------------------------------------------------------------------------------------------
# Request parsing


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


class _Server:
    def __init__(self, engine: Engine, model_name: str, handler: Handler | None, default_max_tokens: int,
                 max_n: int, check_episode: EpisodeCheck | None = None, on_error: ErrorHook | None = None) -> None:
        self.engine = engine
        self.episode_check, self.error_hook = check_episode, on_error
        self.model_name = model_name
        self.handler = handler
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.worker = EngineWorker(engine) if handler is None else None
        self.created = int(time.time())
        self.special_tokens = _special_tokens(engine.tokenizer)
        self.replies = ToolCallReplies()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    # ------------------------------------------------------------------------------------------------ parsing

    def sampling_params(self, body: dict, prompt_len: int, default_max: int, chat: bool) -> SamplingParams:
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
        max_len = self.engine.max_model_len
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
        if not 1 <= n <= self.max_n:
            raise RequestError(f"'n' must be between 1 and {self.max_n}, got {n}.", param="n")
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
        special_stops = [self.special_tokens[s] for s in stop or [] if s in self.special_tokens]
        stop = [s for s in stop or [] if s not in self.special_tokens] or None
        if special_stops:
            base = stop_ids if stop_ids is not None else self.engine.eos_token_ids
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

    def check_model(self, body: dict) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(f"'model' is required; this server serves {self.model_name!r}.", param="model")
        # "NAME:AGENT" asks for the served model on behalf of agent AGENT (multi-agent programs tag calls so).
        if model != self.model_name and not model.startswith(self.model_name + ":"):
            raise RequestError(f"The model {model!r} does not exist here; this server serves {self.model_name!r}.",
                               status=404, param="model", code="model_not_found")
        return model

    def check_episode(self, request: Request) -> str | None:
        """The episode the request's URL names (None under ``/v1/``), once ``check_episode`` let it through."""
        episode = request.scope.get(_EPISODE_SCOPE_KEY)
        if self.episode_check is not None:
            self.episode_check(episode, dict(request.headers))
        return episode

    def report(self, scope: dict, exc: RequestError) -> None:
        """Tell ``on_error`` of an error answer (a failing hook is logged, never answered)."""
        if self.error_hook is None:
            return
        from starlette.datastructures import Headers

        try:
            self.error_hook(scope.get(_EPISODE_SCOPE_KEY), dict(Headers(scope=scope)), exc)
        except Exception:  # noqa: BLE001 - reporting must not change the answer
            logger.exception("on_error failed")

    # ------------------------------------------------------------------------------------------------ running

    async def run(self, prompt: list[int], params: SamplingParams, info: RequestInfo) -> list[Completion]:
        if self.handler is not None:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, self.handler, prompt, params, info)
            out = [out] if isinstance(out, Completion) else list(out)
            if not out or not all(isinstance(c, Completion) for c in out):
                raise RuntimeError("The request handler must return a Completion or a list of Completions.")
            return out
        try:
            return await asyncio.wrap_future(self.worker.submit(prompt, params, info.cache_key))
        except ValueError as exc:  # the engine rejected the request itself (e.g. a token id outside the vocabulary)
            raise RequestError(str(exc)) from exc

    # ------------------------------------------------------------------------------------------------ formatting

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in ids]

    def usage(self, prompt_lens: list[int], completions: list[Completion]) -> dict:
        p, c = sum(prompt_lens), sum(len(x.token_ids) for x in completions)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _special_tokens(tokenizer: Any) -> dict[str, int]:
    """Special tokens by their text: the ones decoding with ``skip_special_tokens=True`` leaves out."""
    out = {t.content: int(i) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
           if getattr(t, "special", False)}
    for text in getattr(tokenizer, "all_special_tokens", None) or []:
        out.setdefault(text, int(tokenizer.convert_tokens_to_ids(text)))
    return out


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status,
        content={"error": {"message": exc.message, "type": "invalid_request_error" if exc.status < 500 else
                           "server_error", "param": exc.param, "code": exc.code}},
    )


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


def _text_deltas(tokenizer: Any, ids: list[int], final_text: str) -> Iterator[tuple[int, str]]:
    """For each token, the piece of ``final_text`` it adds (pieces held back while a character is incomplete)."""
    sent = 0
    for k, tok in enumerate(ids):
        text = tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            yield tok, ""
            continue
        upto = min(len(text), len(final_text))
        piece = final_text[sent:upto] if upto > sent else ""
        sent = max(sent, upto)
        yield tok, piece
    # Whatever decoding a prefix could not show (e.g. a last incomplete character).
    if sent < len(final_text):
        yield -1, final_text[sent:]


class _EpisodePaths:
    """ASGI middleware: ``/episodes/{episode}/v1/...`` is served as ``/v1/...``, with the episode in the scope."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        match = EPISODE_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match:
            from urllib.parse import unquote

            rest = match.group(2)
            scope = {**scope, "path": rest, "raw_path": rest.encode(), _EPISODE_SCOPE_KEY: unquote(match.group(1))}
        await self.app(scope, receive, send)


class _AnswerFailures:
    """ASGI middleware: an unexpected exception becomes a JSON 500 answer, and the connection stays open.

    Without it, Starlette answers 500 and re-raises, and uvicorn then closes the connection, so the client's next
    request on it fails. A failure after the response started (in a stream) still ends the connection: the status
    line is gone.
    """

    def __init__(self, app: Any, report: Callable[[dict, RequestError], None] | None = None) -> None:
        self.app, self.report = app, report

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - any failure of one request is answered, not fatal to others
            if started:
                raise
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            message = f"The server failed on this request ({type(exc).__name__}: {exc})."
            error = RequestError(message, status=500)
            if self.report is not None:
                self.report(scope, error)
            await _error(error)(scope, receive, send)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def create_app(
    engine: Engine,
    model_name: str,
    *,
    handler: Handler | None = None,
    default_max_tokens: int = 512,
    max_n: int = 64,
    check_episode: EpisodeCheck | None = None,
    on_error: ErrorHook | None = None,
) -> FastAPI:
    """An OpenAI-compatible FastAPI app serving ``engine`` under the name ``model_name``.

    Args:
        engine: the engine (its tokenizer renders chats and decodes tokens even when ``handler`` is given).
        model_name: the ``model`` clients must ask for.
        handler: if given, ``handler(prompt_ids, params, info)`` answers every request instead of the engine
            (an environment intercepting an agent's calls, for example); it runs in worker threads, concurrently.
        default_max_tokens: ``max_tokens`` of chat requests that give none (capped by the context left).
        max_n: the largest ``n`` accepted.
        check_episode: if given, every endpoint is also served under ``/episodes/{episode}/v1/`` (a base URL per
            episode), and ``check_episode(episode, headers)`` sees each request before anything else is read:
            ``episode`` is the one its URL names (None under ``/v1/``); it raises :class:`RequestError` to refuse
            the request. The handler finds the episode in ``info.episode``.
        on_error: ``on_error(episode, headers, error)`` is told of every error answer (4xx and 5xx), e.g. to keep
            the reason an episode's calls failed; it must be thread-safe.
    """
    state = _Server(engine, model_name, handler, default_max_tokens, max_n, check_episode, on_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if state.worker is not None:
            state.worker.close()

    app = FastAPI(
        title="agentgym",
        description="OpenAI-compatible endpoints with exact token ids and logprobs.",
        lifespan=lifespan,
    )
    app.state.agentgym = state
    app.add_middleware(_AnswerFailures, report=state.report)
    if check_episode is not None:
        app.add_middleware(_EpisodePaths)  # added last: the outermost, so every other layer sees the rewritten path

    @app.exception_handler(RequestError)
    async def _on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        state.report(request.scope, exc)
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods get the same error body as every other error.
        error = RequestError(str(exc.detail), status=exc.status_code)
        state.report(request.scope, error)
        response = _error(error)
        response.headers.update(exc.headers or {})
        return response

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        state.check_episode(request)
        return {
            "object": "list",
            "data": [{
                "id": model_name, "object": "model", "created": state.created, "owned_by": "agentgym",
                "max_model_len": engine.max_model_len,
            }],
        }

    @app.post("/v1/responses")
    async def responses(request: Request) -> None:
        state.check_episode(request)
        raise RequestError(
            "This server does not serve the Responses API (/v1/responses); it serves /v1/chat/completions and "
            "/v1/completions. Use the client's chat-completions model: OpenAI Agents SDK: "
            "OpenAIChatCompletionsModel(model=..., openai_client=AsyncOpenAI(base_url=...)) or "
            "agents.set_default_openai_api('chat_completions'); CrewAI: LLM(..., api='completions'); AgentScope: "
            "OpenAIChatModel, not OpenAIResponseModel; LangChain: ChatOpenAI(use_responses_api=False).",
            status=404, code="responses_api_not_served",
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        episode = state.check_episode(request)
        body = await _json_body(request)
        model = state.check_model(body)
        prompts = _completion_prompts(state, body.get("prompt"))
        info = RequestInfo("completions", model, body, dict(request.headers), cache_key=_cache_key(body),
                           episode=episode)
        if len(prompts) > 1 and info.cache_key is not None:
            raise RequestError("'cache_key' applies to one prompt; send one prompt per request.", param="cache_key")
        params = [state.sampling_params(body, len(p), 16, chat=False) for p in prompts]
        include_usage = _include_usage(body)
        want_logprobs = body.get("logprobs") is not None and body.get("logprobs") is not False
        results = await asyncio.gather(*(state.run(p, sp, info) for p, sp in zip(prompts, params)))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        choices = []
        for i, (prompt, completions_) in enumerate(zip(prompts, results)):
            for c in completions_:
                choices.append((prompt, c))

        def logprobs_obj(c: Completion) -> dict | None:
            if not want_logprobs:
                return None
            tokens = state.token_strings(c.token_ids)
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            return {"tokens": tokens, "token_logprobs": c.logprobs, "top_logprobs": [{} for _ in tokens],
                    "text_offset": offsets}

        if body.get("stream"):

            def events() -> Iterator[str]:
                for index, (prompt, c) in enumerate(choices):
                    strings = state.token_strings(c.token_ids)
                    for k, (tok, piece) in enumerate(_text_deltas(state.tokenizer, c.token_ids, c.text)):
                        chunk_choice: dict[str, Any] = {"index": index, "text": piece, "finish_reason": None,
                                                        "token_ids": [tok] if tok >= 0 else []}
                        if k == 0:
                            chunk_choice["prompt_token_ids"] = prompt
                        if want_logprobs and tok >= 0:
                            chunk_choice["logprobs"] = {"tokens": [strings[k]], "token_logprobs": [c.logprobs[k]],
                                                        "top_logprobs": [{}], "text_offset": [0]}
                        else:
                            chunk_choice["logprobs"] = None
                        yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                                    "choices": [chunk_choice]})
                    yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                                "choices": [{"index": index, "text": "", "logprobs": None, "token_ids": [],
                                             "finish_reason": c.finish_reason}]})
                if include_usage:
                    yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                                "choices": [], "usage": state.usage([len(p) for p in prompts],
                                                                    [c for _, c in choices])})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")

        return {
            "id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [
                {"index": i, "text": c.text, "logprobs": logprobs_obj(c), "finish_reason": c.finish_reason,
                 "stop_reason": c.stop_reason, "token_ids": c.token_ids, "prompt_token_ids": prompt}
                for i, (prompt, c) in enumerate(choices)
            ],
            "usage": state.usage([len(p) for p in prompts], [c for _, c in choices]),
            "prompt_token_ids": prompts[0] if len(prompts) == 1 else None,
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        episode = state.check_episode(request)
        body = await _json_body(request)
        model = state.check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list of messages.", param="messages")
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise RequestError("'tools' must be a list of tool objects.", param="tools")
        if body.get("tool_choice") == "none":
            tools = None
        text = render_chat(state.tokenizer, messages, tools or None, generated=state.replies.generated)
        prompt = state.tokenizer.encode(text, add_special_tokens=False)
        info = RequestInfo("chat.completions", model, body, dict(request.headers), messages=messages,
                           tools=tools or None, cache_key=_cache_key(body), episode=episode)
        params = state.sampling_params(body, len(prompt), state.default_max_tokens, chat=True)
        include_usage = _include_usage(body)
        want_logprobs = bool(body.get("logprobs"))
        completions_ = await state.run(prompt, params, info)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def message(c: Completion) -> tuple[dict, str]:
            content, calls = parse_tool_calls(c.text) if tools else (c.text, [])
            msg: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None}
            if calls:
                msg["tool_calls"] = calls
                state.replies.remember(msg["content"], calls, c.text)
            return msg, "tool_calls" if calls else c.finish_reason

        def logprob_entries(c: Completion, strings: list[str]) -> list[dict]:
            return [{"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")), "top_logprobs": []}
                    for s, lp in zip(strings, c.logprobs)]

        if body.get("stream"):

            def events() -> Iterator[str]:
                head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
                for index, c in enumerate(completions_):
                    msg, finish = message(c)
                    strings = state.token_strings(c.token_ids)
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                             "logprobs": None, "token_ids": []}
                    yield _sse({**head, "choices": [first], "prompt_token_ids": prompt})
                    if msg.get("tool_calls"):
                        # Tool calls are known only once the reply is complete: send content and calls whole.
                        delta: dict[str, Any] = {"content": msg["content"] or ""}
                        delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(msg["tool_calls"])]
                        chunk = {"index": index, "delta": delta, "finish_reason": None, "token_ids": c.token_ids,
                                 "logprobs": {"content": logprob_entries(c, strings)} if want_logprobs else None}
                        yield _sse({**head, "choices": [chunk]})
                    else:
                        for k, (tok, piece) in enumerate(_text_deltas(state.tokenizer, c.token_ids, c.text)):
                            lp = None
                            if want_logprobs and tok >= 0:
                                lp = {"content": logprob_entries(
                                    Completion([tok], [c.logprobs[k]], c.finish_reason), [strings[k]])}
                            chunk = {"index": index, "delta": {"content": piece}, "finish_reason": None,
                                     "token_ids": [tok] if tok >= 0 else [], "logprobs": lp}
                            yield _sse({**head, "choices": [chunk]})
                    yield _sse({**head, "choices": [{"index": index, "delta": {}, "finish_reason": finish,
                                                     "logprobs": None, "token_ids": []}]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": state.usage([len(prompt)], completions_)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")

        choices = []
        for i, c in enumerate(completions_):
            msg, finish = message(c)
            choices.append({
                "index": i, "message": msg, "finish_reason": finish, "stop_reason": c.stop_reason,
                "logprobs": {"content": logprob_entries(c, state.token_strings(c.token_ids))} if want_logprobs
                else None,
                "token_ids": c.token_ids,
            })
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": state.usage([len(prompt)], completions_), "prompt_token_ids": prompt,
        }

    return app


def _include_usage(body: dict) -> bool:
    """Whether a stream ends with a usage chunk (``stream_options.include_usage``); checked before generating."""
    options = _field(body, "stream_options", dict, {})
    return bool(body.get("stream")) and bool(options.get("include_usage"))


def _cache_key(body: dict) -> str | None:
    key = body.get("cache_key")
    if key is not None and not isinstance(key, str):
        raise RequestError("'cache_key' must be a string.", param="cache_key")
    return key


def _completion_prompts(state: _Server, prompt: Any) -> list[list[int]]:
    """The token ids of a completions ``prompt``: a string, strings, token ids, or lists of token ids."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif is_ids(prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        items = prompt
    else:
        raise RequestError("'prompt' must be a non-empty string, list of strings, list of token ids, or list of "
                           "lists of token ids.", param="prompt")
    out = []
    for item in items:
        ids = state.tokenizer.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise RequestError("'prompt' encodes to no tokens.", param="prompt")
        out.append(ids)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Running a server


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread (see :func:`start_server`)."""

    url: str
    """Base URL including ``/v1``, e.g. ``http://127.0.0.1:43817/v1``."""
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> RunningServer:
    """Serve ``app`` with uvicorn in a daemon thread; ``port=0`` picks a free port. Returns once it accepts calls."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="agentgym-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"The server did not start on {host}:{port} (is the port free?).")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(url=f"http://{host}:{bound}/v1", server=server, thread=thread)


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    handler: Handler | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``engine`` over OpenAI-compatible HTTP until interrupted (binds to 127.0.0.1 unless told otherwise).

    Args:
        model_name: the model id clients use (default: the tokenizer's ``name_or_path`` or ``"agentgym"``).
    """
    import uvicorn

    name = model_name or getattr(engine.tokenizer, "name_or_path", None) or "agentgym"
    uvicorn.run(create_app(engine, name, handler=handler), host=host, port=port, log_level=log_level)


__all__ = [
    "EPISODE_PATH", "EngineWorker", "EpisodeCheck", "ErrorHook", "Handler", "RequestError", "RequestInfo",
    "RunningServer", "ToolCallReplies", "create_app", "parse_tool_calls", "render_chat", "serve", "start_server",
    "tools_system_prompt",
]
