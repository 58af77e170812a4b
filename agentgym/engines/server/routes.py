"""The FastAPI app: the endpoints, the per-episode paths and the error answers (see :mod:`agentgym.engines.server`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agentgym.engines.base import Completion, Engine, SamplingParams
from agentgym.engines.server.batching import EngineWorker
from agentgym.engines.server.protocol import (
    _EPISODE_SCOPE_KEY,
    EPISODE_PATH,
    EpisodeCheck,
    ErrorHook,
    Handler,
    RequestError,
    RequestInfo,
    _cache_key,
    _include_usage,
    _special_tokens,
    _json_body,
    sampling_params,
)
from agentgym.engines.server.rendering import ToolCallReplies, _text_deltas, parse_tool_calls, render_chat

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - fastapi is a dependency of agentgym
    raise ImportError("The agentgym server needs fastapi and uvicorn: pip install fastapi uvicorn") from exc

logger = logging.getLogger("agentgym.engines.server")


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
        return sampling_params(body, prompt_len, default_max, chat, max_model_len=self.engine.max_model_len,
                               max_n=self.max_n, special_tokens=self.special_tokens,
                               eos_token_ids=self.engine.eos_token_ids)

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


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status,
        content={"error": {"message": exc.message, "type": "invalid_request_error" if exc.status < 500 else
                           "server_error", "param": exc.param, "code": exc.code}},
    )


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


def _stream(chunks: Iterator[dict], usage: dict | None) -> StreamingResponse:
    """A streamed answer as server-sent events: each chunk, then the usage chunk when asked for, then ``[DONE]``."""
    def events() -> Iterator[str]:
        for chunk in chunks:
            yield _sse(chunk)
        if usage is not None:
            yield _sse(usage)
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


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

            def chunks() -> Iterator[dict]:
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
                        yield {**head, "choices": [chunk_choice]}
                    yield {**head, "choices": [{"index": index, "text": "", "logprobs": None, "token_ids": [],
                                                "finish_reason": c.finish_reason}]}

            head = {"id": rid, "object": "text_completion", "created": created, "model": model}
            usage = state.usage([len(p) for p in prompts], [c for _, c in choices])
            return _stream(chunks(), {**head, "choices": [], "usage": usage} if include_usage else None)

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

            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}

            def chunks() -> Iterator[dict]:
                for index, c in enumerate(completions_):
                    msg, finish = message(c)
                    strings = state.token_strings(c.token_ids)
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                             "logprobs": None, "token_ids": []}
                    yield {**head, "choices": [first], "prompt_token_ids": prompt}
                    if msg.get("tool_calls"):
                        # Tool calls are known only once the reply is complete: send content and calls whole.
                        delta: dict[str, Any] = {"content": msg["content"] or ""}
                        delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(msg["tool_calls"])]
                        chunk = {"index": index, "delta": delta, "finish_reason": None, "token_ids": c.token_ids,
                                 "logprobs": {"content": logprob_entries(c, strings)} if want_logprobs else None}
                        yield {**head, "choices": [chunk]}
                    else:
                        for k, (tok, piece) in enumerate(_text_deltas(state.tokenizer, c.token_ids, c.text)):
                            lp = None
                            if want_logprobs and tok >= 0:
                                lp = {"content": logprob_entries(
                                    Completion([tok], [c.logprobs[k]], c.finish_reason), [strings[k]])}
                            chunk = {"index": index, "delta": {"content": piece}, "finish_reason": None,
                                     "token_ids": [tok] if tok >= 0 else [], "logprobs": lp}
                            yield {**head, "choices": [chunk]}
                    yield {**head, "choices": [{"index": index, "delta": {}, "finish_reason": finish,
                                                "logprobs": None, "token_ids": []}]}

            usage = {**head, "choices": [], "usage": state.usage([len(prompt)], completions_)}
            return _stream(chunks(), usage if include_usage else None)

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
