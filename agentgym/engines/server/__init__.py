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

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentgym.engines.base import Engine
from agentgym.engines.server.batching import EngineWorker
from agentgym.engines.server.protocol import (
    EPISODE_PATH,
    MAX_NESTING,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    EpisodeCheck,
    ErrorHook,
    Handler,
    RequestError,
    RequestInfo,
)
from agentgym.engines.server.rendering import ToolCallReplies, parse_tool_calls, render_chat, tools_system_prompt
from agentgym.engines.server.routes import create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

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
    "EPISODE_PATH", "MAX_NESTING", "MIN_TEMPERATURE", "MIN_TOP_P", "EngineWorker", "EpisodeCheck", "ErrorHook",
    "Handler", "RequestError", "RequestInfo", "RunningServer", "ToolCallReplies", "create_app", "parse_tool_calls",
    "render_chat", "serve", "start_server", "tools_system_prompt",
]
