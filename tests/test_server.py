"""The OpenAI-compatible server, driven by the real ``openai`` client against uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch

from agentgym.engines import Completion, SamplingParams, TransformersEngine, sampled_logprobs
from agentgym.engines.server import (
    RequestInfo,
    create_app,
    parse_tool_calls,
    render_chat,
    start_server,
    tools_system_prompt,
)
from agentgym.tiny import make_tiny_model, make_tiny_policy

pytestmark = pytest.mark.usefixtures("one_thread")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def policy():
    return make_tiny_policy(seed=0)


@pytest.fixture(scope="module")
def engine(policy):
    model, tok = policy
    return TransformersEngine(model, tok, seed=0)


@pytest.fixture(scope="module")
def server(engine):
    with start_server(create_app(engine, "tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def _teacher_forced(model, prompt, completion, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    return sampled_logprobs(logits, torch.tensor(completion), temperature)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_returns_exact_token_ids_and_logprobs(client, policy):
    model, tok = policy
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, logprobs=True, seed=3,
                                       temperature=0.8)
    extra = r.model_extra
    prompt = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    assert extra["prompt_token_ids"] == prompt
    choice = r.choices[0]
    ids = choice.model_extra["token_ids"]
    assert 0 < len(ids) <= 12
    assert choice.message.content == tok.decode(ids, skip_special_tokens=True)
    lps = [c.logprob for c in choice.logprobs.content]
    assert torch.allclose(torch.tensor(lps), _teacher_forced(model, prompt, ids, 0.8), atol=1e-4)
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(ids)
    # The same seed gives the same reply.
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=3, temperature=0.8)
    assert again.choices[0].model_extra["token_ids"] == ids


def test_completions_prompts_and_n(client, policy):
    model, tok = policy
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, n=2, logprobs=0, seed=1)
    assert len(r.choices) == 2
    prompt = tok.encode("Once upon")
    assert r.model_extra["prompt_token_ids"] == prompt
    for c in r.choices:
        ids = c.model_extra["token_ids"]
        assert torch.allclose(torch.tensor(c.logprobs.token_logprobs), _teacher_forced(model, prompt, ids), atol=1e-4)
    ids_prompt = [tok.encode("abc"), tok.encode("a longer one")]
    r = client.completions.create(model="tiny", prompt=ids_prompt, max_tokens=4, temperature=0)
    assert [c.model_extra["prompt_token_ids"] for c in r.choices] == ids_prompt
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)


def test_streaming_matches_the_whole_reply(client):
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, seed=7)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, seed=7, stream=True,
                                            stream_options={"include_usage": True}, logprobs=True)
    text, ids, finish, usage, lps = "", [], None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            ids += ch.model_extra.get("token_ids") or []
            if ch.logprobs and ch.logprobs.content:
                lps += [c.logprob for c in ch.logprobs.content]
            finish = ch.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert ids == whole.choices[0].model_extra["token_ids"]
    assert len(lps) == len(ids)
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == len(ids)

    full = client.completions.create(model="tiny", prompt="abc", max_tokens=10, seed=2)
    parts = list(client.completions.create(model="tiny", prompt="abc", max_tokens=10, seed=2, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == full.choices[0].text


def test_cache_key_reuses_the_conversation(client, engine, policy):
    _, tok = policy
    messages = [{"role": "user", "content": "first turn"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, extra_body={"cache_key": "conv"})
    messages += [{"role": "assistant", "content": r.choices[0].message.content},
                 {"role": "user", "content": "second"}]
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, extra_body={"cache_key": "conv"})
    assert engine.last_stats["reused_tokens"] > 0
    engine.release("conv")


def test_special_token_stop_string_becomes_a_stop_token(engine, policy):
    """Decoded text leaves special tokens out, so a stop string naming one is turned into a stop token."""
    _, tok = policy
    seen = []

    def handler(prompt_ids, params, info):
        seen.append(params)
        return Completion(token_ids=[5], logprobs=[-1.0], finish_reason="length", text="x")

    with start_server(create_app(engine, "tiny", handler=handler)) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        c.completions.create(model="tiny", prompt="x", max_tokens=3, stop=["<|im_start|>", "END"],
                             extra_body={"top_k": -1})
        c.completions.create(model="tiny", prompt="x", max_tokens=3, stop="<|im_start|>",
                             extra_body={"stop_token_ids": [7]})
    first, second = seen
    assert first.stop == ["END"] and first.top_k == 0
    assert first.stop_token_ids == engine.eos_token_ids + [tok.convert_tokens_to_ids("<|im_start|>")]
    assert second.stop is None and second.stop_token_ids == [7, tok.convert_tokens_to_ids("<|im_start|>")]


def _raw(server, path, content, **headers):
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=30)


def test_bad_requests_get_clear_4xx(server, client):
    r = _raw(server, "/chat/completions", b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = _raw(server, "/chat/completions", b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="at least 1"):
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="ask for at most"):
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError, match="unknown role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number"):
        client.chat.completions.create(model="tiny", messages=msgs, extra_body={"temperature": "hot"})
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="tiny", messages=msgs, top_p=0)
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        client.chat.completions.create(model="tiny", messages=msgs, presence_penalty=1.0)
    with pytest.raises(openai.BadRequestError, match="'prompt' must be"):
        client.completions.create(model="tiny", prompt=[])
    with pytest.raises(openai.BadRequestError, match="outside"):
        client.completions.create(model="tiny", prompt=[[10**7]])
    r = _raw(server, "/completions", json.dumps({"prompt": "x"}).encode())
    assert r.status_code == 400 and "'model' is required" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="output_type"):  # names the frameworks' settings
        client.chat.completions.create(model="tiny", messages=msgs, response_format={"type": "json_object"})
    with pytest.raises(openai.NotFoundError, match="OpenAIChatCompletionsModel") as info:
        client.responses.create(model="tiny", input="hi")
    assert info.value.body["code"] == "responses_api_not_served"


def test_prompt_longer_than_the_context(policy):
    _, tok = policy
    small = make_tiny_model(len(tok), max_position_embeddings=40, eos_token_id=tok.eos_token_id)
    with start_server(create_app(TransformersEngine(small, tok), "small")) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="context is 40 tokens") as err:
            c.chat.completions.create(model="small", messages=[{"role": "user", "content": "x" * 60}])
        assert err.value.body["code"] == "context_length_exceeded"
        # Without max_tokens the reply gets what is left of the context.
        r = c.completions.create(model="small", prompt="y" * 30, max_tokens=10, extra_body={"stop_token_ids": []})
        assert len(r.choices[0].model_extra["token_ids"]) == 10


def test_concurrent_requests_are_batched_and_all_answered(engine, policy):
    _, tok = policy
    sizes = []
    original = engine.generate
    gate = threading.Event()

    def recording(prompts, params=None, cache_keys=None):
        gate.wait(timeout=10)  # hold the first batch until the other requests have queued
        sizes.append(len(prompts))
        return original(prompts, params, cache_keys)

    engine.generate = recording
    try:
        with start_server(create_app(engine, "tiny")) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
            results = [None] * 8

            def call(i):
                results[i] = c.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            threading.Timer(1.0, gate.set).start()
            for t in threads:
                t.join(timeout=60)
    finally:
        engine.generate = original
    assert all(r is not None and r.choices[0].model_extra["token_ids"] for r in results)
    assert sum(sizes) == 8 and max(sizes) > 1


def test_handler_answers_instead_of_the_engine_and_tool_calls_are_parsed(engine, policy):
    _, tok = policy
    seen: list[tuple[list[int], SamplingParams, RequestInfo]] = []
    reply = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

    def handler(prompt_ids, params, info):
        seen.append((prompt_ids, params, info))
        ids = tok.encode(reply)
        return Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop", text=reply)

    with start_server(create_app(engine, "tiny", handler=handler)) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        r = c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL], max_tokens=50,
                                      extra_body={"cache_key": "episode-7"})
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me check."
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        prompt_ids, params, info = seen[0]
        rendered = tok.decode(prompt_ids)
        assert "<tools>" in rendered and "get_weather" in rendered and "Weather in Paris?" in rendered
        assert params.max_new_tokens == 50
        assert info.endpoint == "chat.completions" and info.tools == [WEATHER_TOOL]
        assert info.cache_key == "episode-7" and info.messages == messages

        # The tool result goes back in the next turn; the earlier call is rendered into the assistant turn.
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL], max_tokens=5)
        rendered = tok.decode(seen[-1][0])
        assert '"name": "get_weather"' in rendered and "<tool_response>\nsunny\n</tool_response>" in rendered

        stream = c.chat.completions.create(model="tiny", messages=messages[:1], tools=[WEATHER_TOOL], stream=True)
        calls, finish = [], None
        for chunk in stream:
            for ch in chunk.choices:
                calls += ch.delta.tool_calls or []
                finish = ch.finish_reason or finish
        assert finish == "tool_calls" and calls[0].function.name == "get_weather"

        # tool_choice="none" leaves the tools out and the reply unparsed.
        r = c.chat.completions.create(model="tiny", messages=messages[:1], tools=[WEATHER_TOOL], tool_choice="none")
        assert r.choices[0].message.tool_calls is None and "<tools>" not in tok.decode(seen[-1][0])


def test_a_tool_call_reply_sent_back_unchanged_is_rendered_as_generated(engine, policy):
    """The next prompt extends the previous prompt and reply token for token, whatever spacing the model gave its
    call; a reply the client changed is rendered from its parts."""
    _, tok = policy
    seen: list[list[int]] = []
    reply = ' <tool_call>{"arguments":{"city":"Paris"},"name":"get_weather"}</tool_call> then'
    reply_ids = tok.encode(reply, add_special_tokens=False)

    def handler(prompt_ids, params, info):
        seen.append(list(prompt_ids))
        return Completion(token_ids=reply_ids, logprobs=[0.0] * len(reply_ids), finish_reason="stop", text=reply)

    with start_server(create_app(engine, "tiny", handler=handler)) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0)
        for stream in (False, True):
            messages = [{"role": "user", "content": "Weather in Paris?"}]
            if stream:
                deltas = [ch.delta for chunk in c.chat.completions.create(
                    model="tiny", messages=messages, tools=[WEATHER_TOOL], stream=True) for ch in chunk.choices]
                content = "".join(d.content or "" for d in deltas)
                calls = [{"id": t.id, "type": "function", "function": {"name": t.function.name,
                          "arguments": t.function.arguments}} for d in deltas for t in d.tool_calls or []]
            else:
                msg = c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL]).choices[0].message
                content, calls = msg.content, [t.model_dump() for t in msg.tool_calls]
            assert content == "then" and len(calls) == 1
            first = seen[-1]
            messages += [{"role": "assistant", "content": content, "tool_calls": calls},
                         {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}]
            c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL])
            assert seen[-1][: len(first) + len(reply_ids)] == first + reply_ids

            edited = {**calls[0], "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
            messages[1] = {"role": "assistant", "content": content, "tool_calls": [edited]}
            c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL])
            rendered = tok.decode(seen[-1])
            assert '{"name": "get_weather", "arguments": {"city": "Rome"}}' in rendered and reply not in rendered


def test_parse_tool_calls():
    text = ('a <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> b '
            '<tool_call>not json</tool_call><tool_call>\n{"name": "g", "arguments": "{\\"y\\": 2}"}')
    content, calls = parse_tool_calls(text)
    assert [c["function"]["name"] for c in calls] == ["f", "g"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    assert calls[1]["function"]["arguments"] == '{"y": 2}'
    assert content == "a  b <tool_call>not json</tool_call>"
    assert parse_tool_calls("no calls") == ("no calls", [])


def test_render_chat_passes_tools_to_templates_that_render_them(policy):
    _, tok = policy

    class NativeTools:
        chat_template = "{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}{{ tools | tojson }}"

        def apply_chat_template(self, messages, tools=None, **kwargs):
            return json.dumps({"messages": messages, "tools": tools})

    out = json.loads(render_chat(NativeTools(), [{"role": "user", "content": "hi"}], [WEATHER_TOOL]))
    assert out["tools"] == [WEATHER_TOOL] and out["messages"] == [{"role": "user", "content": "hi"}]
    text = render_chat(tok, [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], [WEATHER_TOOL])
    assert text.startswith("<|im_start|>system\n" + tools_system_prompt([WEATHER_TOOL]))
    assert "parts" in text


# A lone surrogate survives json.loads (JSON allows \ud800 escapes) but is not text: no tokenizer can encode it.
LONE_SURROGATES = [
    ("/chat/completions", {"messages": [{"role": "user", "content": "\ud800x"}]}, "'messages[0].content'"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]},
     "'messages[0].content[0].text'"),
    ("/chat/completions", {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"city": "\ud83d"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]},
     "'messages[1].tool_calls[0].function.arguments'"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                           "tools": [{"type": "function", "function": {"name": "f", "description": "\udc00"}}]},
     "'tools[0].function.description'"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"}, "'stop'"),
    ("/completions", {"prompt": "x", "stop": ["ok", "\udfff"]}, "'stop[1]'"),
    ("/completions", {"prompt": "\udfff"}, "'prompt'"),
    ("/completions", {"prompt": ["fine", "\ud800"]}, "'prompt[1]'"),
    ("/completions", {"prompt": "x", "\ud800": 1}, "A key of the request body"),
]


@pytest.mark.parametrize(("path", "body", "where"), LONE_SURROGATES)
def test_text_that_is_not_unicode_is_a_400(server, path, body, where):
    r = _raw(server, path, json.dumps({"model": "tiny", "max_tokens": 2, **body}).encode())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert where in error["message"] and "lone surrogate" in error["message"]
    assert error["type"] == "invalid_request_error"
    # The same text as raw bytes (a surrogate written in UTF-8's encoding scheme, which UTF-8 forbids).
    raw = json.dumps({"model": "tiny", "max_tokens": 2, **body}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    r = _raw(server, path, raw)
    assert r.status_code == 400 and where in r.json()["error"]["message"]


def test_surrogate_pairs_and_other_odd_text_are_answered(server, client):
    content = "\ud83d\ude00 e\u0301 \u202eRTL\u202c \x00 \U0010ffff \ufeff"
    r = _raw(server, "/chat/completions", json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}).encode())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"]
    r = client.completions.create(model="tiny", prompt="\U0001f600\x00", max_tokens=2, stop=["\u05e9"])
    assert r.choices[0].model_extra["token_ids"]


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_the_connection_survives_every_error_response(engine):
    """A 4xx or 5xx answer leaves the keep-alive connection open: the next request on it is answered."""
    def handler(prompt_ids, params, info):
        if info.body.get("user") == "boom":
            raise RuntimeError("the handler failed")
        return Completion(token_ids=[5], logprobs=[-1.0], finish_reason="length", text="x")

    good = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    bad = [
        ("POST", "/chat/completions", json.dumps({"model": "tiny", "messages": [
            {"role": "user", "content": "\ud800x"}]}).encode(), 400),
        ("POST", "/completions", json.dumps({"model": "tiny", "prompt": "\udfff"}).encode(), 400),
        ("POST", "/completions", b"{not json", 400),
        ("POST", "/completions", b"[" * 100_000, 400),
        ("POST", "/completions", json.dumps({**good, "model": "gpt-4"}).encode(), 404),
        ("GET", "/no/such/path", b"", 404),
        ("GET", "/completions", b"", 405),
        ("POST", "/completions", json.dumps({**good, "user": "boom"}).encode(), 500),
    ]
    with start_server(create_app(engine, "tiny", handler=handler)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        ports = set()
        for method, path, content, status in bad:
            r = http.request(method, path, content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (path, content[:40], r.text)
            assert r.json()["error"]["message"] and r.headers.get("connection") != "close"
            ports.add(_local_port(r))
            ok = http.post("/completions", json=good)
            assert ok.status_code == 200 and ok.json()["choices"][0]["token_ids"] == [5]
            ports.add(_local_port(ok))
        assert len(ports) == 1  # every request went over the one connection
