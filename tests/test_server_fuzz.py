"""A seeded fuzz of every endpoint of the OpenAI-compatible server, on 127.0.0.1 with the tiny model.

Random JSON shapes (valid requests with fields deleted, replaced by junk of any type, or nested junk added), random
text (lone surrogates, NUL, combining marks, right-to-left text, 4-byte emoji, special tokens), huge and non-finite
numbers, and raw bodies that are not JSON. Every answer must be below 500, every error an OpenAI-style error body,
and the kept-alive connection must carry the next request; afterwards the server still answers good requests.
"""

from __future__ import annotations

import copy
import json
import random
import time

import httpx
import pytest

from agentgym.engines import TransformersEngine
from agentgym.engines.server import create_app, start_server
from agentgym.tiny import make_tiny_policy

pytestmark = pytest.mark.usefixtures("one_thread")

REQUESTS = 400
SEED = 19

PIECES = [
    "\ud800", "\udfff", "\udc00x", "x\ud83d", "\x00", "a\x00b", "e\u0301\u0301\u0301", "\u0301", "\u202eevil\u202c",
    "\u200f\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627", "\U0001f600", "\U0001f469\u200d\U0001f4bb",
    "\ufeff", "\uffff", "\U0010ffff", "\ue000", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
    '{"name": "f", "arguments": {}}', "{{ messages }}", "{% if %}", "\r\n", "\t", " ", "", "tiny", "user", "none",
    "x" * 300,
]
RANGES = [(0, 0x1F), (0x20, 0x7E), (0x300, 0x36F), (0x590, 0x6FF), (0xD800, 0xDFFF), (0xFFF0, 0xFFFF),
          (0x1F300, 0x1FAFF), (0, 0x10FFFF)]
NUMBERS = [0, 1, 2, 3, -1, -(2**63) - 1, 2**64, 10**12, 10**30, 0.5, -0.0, 1e-320, 1e308, 2.5, float("nan"),
           float("inf"), float("-inf")]
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k",
          "stop", "stop_token_ids", "seed", "stream", "stream_options", "logprobs", "top_logprobs", "tools",
          "tool_choice", "cache_key", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
          "echo", "response_format", "user", "best_of", "suffix"]
RAW_BODIES = [
    b"", b"{", b"}", b"[]", b"null", b"0", b'"tiny"', b"\xff\xfe\x00", b'{"model": "\xed\xa0\x80"}',
    b'{"model": "tiny", "prompt": "\xc3"}', b"[" * 100_000, b'{"a":' * 50_000, b'{"model": "tiny", "n": 1' +
    b"0" * 5000 + b"}", b'{"model": "tiny", "prompt": "x", "max_tokens": 1e999}',
    b'{"model": "tiny", "prompt": "x", "temperature": NaN}', b'{"model": "tiny", "prompt": "x", "top_p": -Infinity}',
    b'\xef\xbb\xbf{"model": "tiny", "prompt": "x", "max_tokens": 1}', '{"model": "tiny", "prompt": "x"}'.encode(
        "utf-16"), b'{"model": "tiny", "model": "tiny", "prompt": "x", "max_tokens": 1}',
]


def _text(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.6:
            out.append(rng.choice(PIECES))
        else:
            lo, hi = rng.choice(RANGES)
            out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 5))))
    return "".join(out)


def _junk(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind in (1, 2):
        return rng.choice(NUMBERS)
    if kind in (3, 4):
        return _text(rng)
    if kind == 5:
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 6:
        return {_text(rng) if rng.random() < 0.5 else rng.choice(FIELDS): _junk(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    return _message(rng, depth + 1)


def _message(rng: random.Random, depth: int = 0) -> dict:
    msg: dict = {"role": rng.choice(["system", "user", "assistant", "tool", "developer", "robot", 3, None]),
                 "content": rng.choice([_text(rng), None, [{"type": "text", "text": _text(rng)}],
                                        [{"type": "image_url", "image_url": {"url": "x"}}], _junk(rng, depth + 1)])}
    if rng.random() < 0.3:
        msg["tool_calls"] = rng.choice([
            [{"id": "c1", "type": "function", "function": {"name": _text(rng), "arguments": rng.choice(
                ['{"city": "Paris"}', "{not json", _text(rng), _junk(rng, depth + 1)])}}],
            [{"function": _junk(rng, depth + 1)}], [_junk(rng, depth + 1)], _junk(rng, depth + 1)])
    if rng.random() < 0.2:
        msg["tool_call_id"] = _junk(rng, depth + 1)
    if rng.random() < 0.1:
        del msg[rng.choice(list(msg))]
    return msg


def _tool(rng: random.Random) -> object:
    return rng.choice([
        {"type": "function", "function": {"name": _text(rng), "description": _text(rng),
                                          "parameters": {"type": "object", "properties": {_text(rng): _junk(rng)}}}},
        {"type": "function", "function": _junk(rng)}, _junk(rng),
    ])


def _body(rng: random.Random, chat: bool) -> dict:
    body: dict = {"model": "tiny", "max_tokens": rng.randint(1, 3)}
    if chat:
        body["messages"] = [_message(rng) if rng.random() < 0.7 else {"role": "user", "content": _text(rng)}
                            for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            body["tools"] = rng.choice([[_tool(rng) for _ in range(rng.randint(1, 2))], _junk(rng)])
    else:
        body["prompt"] = rng.choice([
            _text(rng), [_text(rng), _text(rng)], [rng.randint(0, 104) for _ in range(3)],
            [[rng.randint(0, 104)], [rng.randint(0, 104), 5]], [rng.choice(NUMBERS), 3], [[-1]], [[]], [True],
            _junk(rng),
        ])
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(FIELDS)
        choice = rng.random()
        if choice < 0.15:
            body.pop(name, None)
        elif name == "stop" and choice < 0.5:
            body[name] = rng.choice([_text(rng), [_text(rng), _text(rng)]])
        elif name == "stream" and choice < 0.6:
            body[name] = True
            body["stream_options"] = rng.choice([{"include_usage": True}, _junk(rng)])
        elif name in ("max_tokens", "n") and choice < 0.6:
            body[name] = rng.choice([0, 1, 2, -5, 10**12, 2**63])  # never a large reply: keep the test fast
        else:
            body[name] = _junk(rng)
    if rng.random() < 0.05:
        body[_text(rng)] = _junk(rng)
    return body


def _clean(value: object) -> object:
    """``value`` without lone surrogates (most bodies are otherwise valid text, to reach the code past the check)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # lone ones become U+FFFD
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _encode(rng: random.Random, body: dict) -> bytes:
    if rng.random() < 0.7:
        body = _clean(body)
    if rng.random() < 0.85:
        return json.dumps(body).encode()  # lone surrogates become \udXXX escapes, NaN and Infinity literals
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _requests(rng: random.Random, count: int) -> list[tuple[str, str, bytes]]:
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.42:
            out.append(("POST", "/v1/chat/completions", _encode(rng, _body(rng, chat=True))))
        elif r < 0.8:
            out.append(("POST", "/v1/completions", _encode(rng, _body(rng, chat=False))))
        elif r < 0.88:
            out.append(("POST", rng.choice(["/v1/chat/completions", "/v1/completions"]), rng.choice(RAW_BODIES)))
        elif r < 0.93:
            out.append(("GET", "/v1/models" + rng.choice(["", "?x=\u00e9", "/tiny"]), b""))
        else:  # FastAPI's own pages, unknown paths, wrong methods
            out.append(rng.choice([("GET", "/openapi.json", b""), ("GET", "/docs", b""), ("GET", "/", b""),
                                   ("GET", "/v1/chat/completions", b""), ("POST", "/v1/models", b"{}"),
                                   ("PUT", "/v1/completions", b"{}"), ("GET", "/v1/no/such/path", b""),
                                   ("DELETE", "/v1/models", b"")]))
    return out


# A Hermes-style template that renders tools and tool calls itself (as Qwen's do) and checks the conversation.
NATIVE_TOOLS_TEMPLATE = (
    "{%- if messages[0].role == 'assistant' %}{{ raise_exception('Start with a system or user message.') }}{% endif %}"
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>"
    "<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for call in message.tool_calls %}{% if call.function is defined %}{% set call = call.function %}{% endif %}"
    '\n<tool_call>\n{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def servers():
    """The tiny model behind its own chat template, and behind one that renders tools itself."""
    model, tok = make_tiny_policy(seed=0)
    native = copy.deepcopy(tok)
    native.chat_template = NATIVE_TOOLS_TEMPLATE
    # Short default replies and n <= 4: the fuzz is about parsing, not generation.
    with start_server(create_app(TransformersEngine(model, tok, seed=0), "tiny", default_max_tokens=4,
                                 max_n=4)) as plain, \
            start_server(create_app(TransformersEngine(model, native, seed=0), "tiny", default_max_tokens=4,
                                    max_n=4)) as tools:
        yield plain, tools


def test_fuzz_every_endpoint_no_5xx_and_the_server_still_answers(servers):
    rng = random.Random(SEED)
    failures, statuses = [], {}
    start = time.monotonic()
    roots = [srv.url.removesuffix("/v1") for srv in servers]
    with httpx.Client(base_url=roots[0], timeout=60) as plain, httpx.Client(base_url=roots[1], timeout=60) as native:
        for method, path, content in _requests(rng, REQUESTS):
            http = rng.choice([plain, native])
            headers = {"content-type": rng.choice(["application/json", "text/plain", "application/json"])}
            try:
                r = http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:  # the server dropped the connection
                failures.append((method, path, content[:200], f"{type(exc).__name__}: {exc}"))
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append((method, path, content[:200], r.status_code, r.text[:200]))
            elif r.status_code >= 400:
                error = r.json().get("error")
                if not (isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]):
                    failures.append((method, path, content[:200], r.status_code, "no error message", r.text[:200]))
            elif "text/event-stream" in r.headers.get("content-type", ""):
                if not r.text.rstrip().endswith("data: [DONE]"):
                    failures.append((method, path, content[:200], "stream ended early", r.text[-200:]))
            elif path in ("/openapi.json", "/docs"):
                continue
            elif not isinstance(r.json().get("choices", r.json().get("data")), list):
                failures.append((method, path, content[:200], r.status_code, r.text[:200]))

        # Afterwards both servers answer good requests on the same clients.
        for http in (plain, native):
            r = http.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
            assert r.status_code == 200 and r.json()["choices"][0]["token_ids"]
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": "Once upon", "max_tokens": 3, "n": 2})
            assert r.status_code == 200 and len(r.json()["choices"]) == 2
            assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    elapsed = time.monotonic() - start
    assert not failures, f"{len(failures)} bad answers of {REQUESTS}, e.g.:\n" + "\n".join(map(repr, failures[:15]))
    # Both kinds of answer happen: the fuzz reaches the engine, not only the validation.
    assert statuses.get(200, 0) > REQUESTS // 20 and sum(v for k, v in statuses.items() if k >= 400) > REQUESTS // 2
    assert elapsed < 120, f"the fuzz took {elapsed:.0f} s"
