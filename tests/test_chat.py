"""Incremental chat tokenization: ids of prompt + actions + observations equal the template's whole rendering."""

import numpy as np
import pytest

from agentgym.chat import ChatTemplate
from agentgym.message_env import ChatTokenEnv, MessageEnv
from agentgym.tiny import make_tiny_tokenizer

# SmolLM2-Instruct's template: a default system prompt when the conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A template that trims assistant content: exact equality is impossible when the policy emits outer whitespace.
TRIM_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | trim) + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Echo(MessageEnv):
    """Replies 'you said: <text>' as a user, then a tool message, for three turns."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = 0
        return [{"role": "user", "content": "hi there"}], {}

    def step(self, text):
        self.n += 1
        done = self.n >= 3
        msgs = [] if done else [{"role": "user" if self.n == 1 else "tool", "content": f"you said: {text}"}]
        return msgs, float(self.n), done, False, {}


def run_episode(tok, replies, stop=True):
    env = ChatTokenEnv(Echo(), tok)
    obs, info = env.reset(seed=0)
    ids = list(obs)
    for r in replies:
        action = tok(r, add_special_tokens=False).input_ids + ([tok.convert_tokens_to_ids("<|im_end|>")] if stop else [])
        obs, _, term, trunc, info = env.step(np.array(action))
        ids += action + list(obs)
        if term or trunc:
            break
    return env, ids, info


def template_ids(tok, messages):
    return tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids


@pytest.mark.parametrize("template", [None, SMOLLM2_TEMPLATE])
@pytest.mark.parametrize("stop", [True, False])
def test_concatenation_equals_template(template, stop):
    tok = make_tiny_tokenizer()
    if template:
        tok.chat_template = template
    env, ids, info = run_episode(tok, ["hello", "  spaced out ", "bye"], stop=stop)
    assert info["messages"][-1] == {"role": "assistant", "content": "bye"}
    assert info["prefix_stable"]
    assert ids == template_ids(tok, info["messages"])


def test_action_ids_are_never_retokenized():
    """A non-canonical tokenization of the reply stays in the context as sampled."""
    tok = make_tiny_tokenizer()
    # Add a merged token so "ab" has a canonical single id but the policy samples "a" + "b".
    tok.add_tokens(["ab"])
    env = ChatTokenEnv(Echo(), tok)
    env.reset()
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    obs, *_ , info = env.step(np.array([a, b, end]))
    assert info["action_text"] == "ab"
    # The observation starts right after the sampled <|im_end|>: nothing of the action is repeated in it.
    assert tok.decode(obs.tolist()).startswith("\n<|im_start|>user\nyou said: ab")


def test_trimming_template_documented_case():
    tok = make_tiny_tokenizer()
    tok.chat_template = TRIM_TEMPLATE
    env, ids, info = run_episode(tok, [" padded ", "x", "y"])
    whole = template_ids(tok, info["messages"])
    # Not equal (the template trims what the policy sampled) ...
    assert ids != whole
    # ... but every observation is exactly the template's text around the turn, and removing the policy's outer
    # spaces recovers the template's ids.
    space = tok.convert_tokens_to_ids(" ")
    first_action_at = len(template_ids(tok, info["messages"][:1])) + len(tok("<|im_start|>assistant\n").input_ids)
    fixed = ids[:first_action_at] + ids[first_action_at + 1 : first_action_at + 7] + ids[first_action_at + 8 :]
    assert ids[first_action_at] == space and ids[first_action_at + 7] == space
    assert fixed == whole


def test_prefix_unstable_template_is_reported():
    tok = make_tiny_tokenizer()
    # Renders only the last two messages: earlier turns change as the conversation grows.
    tok.chat_template = (
        "{% for m in messages[-2:] %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    env = ChatTokenEnv(Echo(), tok)
    env.reset()
    env.step(np.array(tok("a<|im_end|>", add_special_tokens=False).input_ids))
    _, *_, info = env.step(np.array(tok("b<|im_end|>", add_special_tokens=False).input_ids))
    assert info["prefix_stable"] is False


def test_missing_chat_template_is_an_error():
    tok = make_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ChatTemplate(tok)


def test_tools_are_rendered():
    tok = make_tiny_tokenizer()
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\ntools: {{ tools | map(attribute='function.name') | join(',') }}<|im_end|>\n"
        "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {}}}]
    chat = ChatTemplate(tok, tools=tools)
    assert "tools: calc" in tok.decode(chat.prompt_ids([{"role": "user", "content": "q"}]))


def test_smollm2_tokenizer_concatenation_equals_template():
    """The real SmolLM2 tokenizer (byte-level BPE, its own chat template with a default system prompt)."""
    from agentgym.models import default_tokenizer

    tok = default_tokenizer()
    env = ChatTokenEnv(Echo(), tok)
    obs, _ = env.reset(seed=0)
    ids = list(obs)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for reply in ["Hello there!", "SELECT * FROM t;\n", "done"]:
        action = tok(reply, add_special_tokens=False).input_ids + [end]
        obs, _, term, _, info = env.step(np.array(action))
        ids += action + list(obs)
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(ids)
    assert ids == template_ids(tok, info["messages"])
