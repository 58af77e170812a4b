"""Chat requests as prompt text: OpenAI messages and tools through the tokenizer's chat template, Hermes-style
tool calls parsed out of replies, and replies sent back unchanged rendered as the text the model generated.

The template is applied by :func:`agentgym.chat.render_messages`, the function environments render with.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from agentgym.chat import render_messages
from agentgym.engines.server.protocol import RequestError

try:
    from jinja2 import TemplateError
except ImportError:  # pragma: no cover - jinja2 comes with transformers' chat templates
    TemplateError = RuntimeError  # type: ignore[assignment,misc]

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
    try:
        return render_messages(tokenizer, rendered, tools if native_tools else None)
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
