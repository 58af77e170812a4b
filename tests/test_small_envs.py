from fractions import Fraction

import numpy as np
import pytest

import agentgym
from agentgym.envs.arithmetic import ArithmeticEnv, safe_eval
from agentgym.envs.guess_number import GuessNumberEnv


def say(env, tok, text):
    ids = tok(text + "<|im_end|>", add_special_tokens=False).input_ids
    return env.step(np.array(ids))


def test_guess_number_episode(tiny_tokenizer):
    env = agentgym.make("agentgym/GuessNumber-v0", tokenizer=tiny_tokenizer, low=1, high=100)
    _, info = env.reset(seed=0, options={"secret": 42})
    obs, r, term, _, _ = say(env, tiny_tokenizer, "50")
    assert "Lower." in tiny_tokenizer.decode(obs.tolist()) and r == 0 and not term
    obs, r, term, _, _ = say(env, tiny_tokenizer, "My guess: 10")
    assert "Higher." in tiny_tokenizer.decode(obs.tolist())
    obs, r, term, _, info = say(env, tiny_tokenizer, "42")
    assert r == 1.0 and term and info["success"]


def test_guess_number_runs_out_and_invalid():
    env = GuessNumberEnv(low=1, high=3, max_turns=2, invalid_penalty=0.1)
    env.reset(options={"secret": 2})
    msgs, r, term, _, _ = env.step("no idea")
    assert r == -0.1 and "Reply with an integer" in msgs[0]["content"] and not term
    msgs, r, term, trunc, info = env.step("3")
    assert term and not trunc and info == {"success": False, "secret": 2} and msgs == []


def test_guess_number_seeded():
    a, b = GuessNumberEnv(), GuessNumberEnv()
    assert a.reset(seed=5)[1]["secret"] == b.reset(seed=5)[1]["secret"]
    with pytest.raises(ValueError, match="must not exceed"):
        GuessNumberEnv(low=5, high=1)


def test_arithmetic_tool_then_answer():
    env = ArithmeticEnv(tool_cost=0.1)
    msgs, info = env.reset(seed=0, options={"expression": "37 * 12 + 5"})
    assert msgs[-1]["content"] == "What is 37 * 12 + 5?" and info["answer"] == "449"
    msgs, r, term, _, _ = env.step("CALC: 37*12")
    assert msgs == [{"role": "tool", "content": "444"}] and r == pytest.approx(-0.1) and not term
    msgs, r, term, _, _ = env.step("CALC: __import__('os')")
    assert msgs[0]["content"].startswith("error: only integers")
    msgs, r, term, _, info = env.step("ANSWER: 449")
    assert r == 1.0 and term and info["success"]


def test_arithmetic_wrong_and_out_of_turns():
    env = ArithmeticEnv(max_turns=2)
    env.reset(options={"expression": "2 + 2"})
    assert env.step("ANSWER: 5")[1:3] == (0.0, True)
    env.reset(options={"expression": "2 + 2"})
    msgs, r, term, _, _ = env.step("four")
    assert "CALC" in msgs[0]["content"] and not term
    _, r, term, _, info = env.step("still thinking")
    assert term and r == 0.0 and not info["success"]


def test_arithmetic_last_number_answer_format():
    env = ArithmeticEnv(max_turns=2, answer_format="last_number")
    env.reset(options={"expression": "12 + 11"})
    _, r, term, _, info = env.step("12 plus 11 makes 23.")
    assert (r, term, info["success"]) == (1.0, True, True)
    env.reset(options={"expression": "12 + 11"})
    assert env.step("The answer is 22 which")[1:3] == (0.0, True)
    env.reset(options={"expression": "12 + 11"})
    assert env.step("ANSWER: 23 (not 5)")[1] == 1.0  # the marker still wins over the last number
    env.reset(options={"expression": "12 + 11"})
    msgs, r, term, _, _ = env.step("no digits here")
    assert not term and "ANSWER" in msgs[0]["content"]
    with pytest.raises(ValueError, match="answer_format"):
        ArithmeticEnv(answer_format="loose")


def test_arithmetic_token_level(tiny_tokenizer):
    env = agentgym.make("agentgym/Arithmetic-v0", tokenizer=tiny_tokenizer)
    env.reset(seed=1, options={"expression": "6 * 7"})
    obs, *_ = say(env, tiny_tokenizer, "CALC: 6*7")
    assert tiny_tokenizer.decode(obs.tolist()) == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    _, r, term, _, _ = say(env, tiny_tokenizer, "ANSWER: 42")
    assert r == 1.0 and term


def test_safe_eval():
    assert safe_eval("(1 + 2) * 3 - 4 / 8") == Fraction(17, 2)
    for bad, msg in [("2 ** 100", "only integers"), ("1/0", "division by zero"), ("1" * 300, "longer than"), ("(", "not an")]:
        with pytest.raises(ValueError, match=msg):
            safe_eval(bad)
