import pytest

import agentgym
from agentgym.message_env import ChatTokenEnv
from agentgym.registration import registry


def test_unknown_id_suggests_closest():
    with pytest.raises(KeyError, match="Did you mean 'agentgym/GuessNumber-v0'"):
        agentgym.make("agentgym/GuesNumber-v0")


def test_malformed_id():
    with pytest.raises(ValueError, match="namespace/Name-vN"):
        agentgym.register("no version", "x:y")


def test_register_and_make_with_defaults(tiny_tokenizer):
    from agentgym.envs.guess_number import GuessNumberEnv

    agentgym.register("test/Tiny-v0", GuessNumberEnv, low=1, high=3)
    try:
        env = agentgym.make("test/Tiny-v0", tokenizer=tiny_tokenizer, max_turns=2, max_context_tokens=500)
        assert isinstance(env, ChatTokenEnv) and env.max_context_tokens == 500
        assert env.env.high == 3 and env.env.max_turns == 2
    finally:
        del registry["test/Tiny-v0"]


def test_entry_point_plugins_are_loaded(monkeypatch):
    from importlib import metadata

    import agentgym.registration as reg

    class EP:
        name = "demo"

        def load(self):
            return lambda: agentgym.register("plugin/Demo-v0", "agentgym.envs.guess_number:GuessNumberEnv")

    def fake_entry_points(group):
        assert group == "agentgym.envs"
        return [EP()]

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(reg, "_plugins_loaded", False)
    try:
        assert reg.spec("plugin/Demo-v0").id == "plugin/Demo-v0"
    finally:
        registry.pop("plugin/Demo-v0", None)


def test_token_env_rejects_wrapper_kwargs():
    from test_core import CountEnv

    agentgym.register("test/Count-v0", CountEnv)
    try:
        assert agentgym.make("test/Count-v0").vocab_size == 10
        with pytest.raises(TypeError, match="takes no \\['tokenizer'\\]"):
            agentgym.make("test/Count-v0", tokenizer=object())
        with pytest.raises(TypeError, match="takes no \\['message_wrapper'\\]"):
            agentgym.make("test/Count-v0", message_wrapper=lambda env: env)
    finally:
        del registry["test/Count-v0"]


def test_make_names_an_argument_the_env_does_not_take(tiny_tokenizer):
    with pytest.raises(TypeError, match="agentgym/GuessNumber-v0 takes no argument 'hihg' \\(did you mean 'high'\\?\\)"):
        agentgym.make("agentgym/GuessNumber-v0", tokenizer=tiny_tokenizer, hihg=3)


def test_message_wrapper_wraps_the_message_env_before_tokenization(tiny_tokenizer):
    from agentgym.message_env import SystemPromptEnv

    kwargs = {"tokenizer": tiny_tokenizer, "system_prompt": None}
    env = agentgym.make("agentgym/GuessNumber-v0", message_wrapper=lambda e: SystemPromptEnv(e, "Be brief."), **kwargs)
    _, info = env.reset(seed=0)
    assert isinstance(env.unwrapped_env, SystemPromptEnv)
    assert info["messages"][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(TypeError, match="message_wrapper returned a str, not a MessageEnv"):
        agentgym.make("agentgym/GuessNumber-v0", message_wrapper=lambda e: "oops", **kwargs)


def test_make_without_a_tokenizer_never_fetches_the_embedded_model(tmp_path, monkeypatch):
    import agentgym

    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"needs a tokenizer: pass tokenizer=.*`agentgym fetch`"):
        agentgym.make("agentgym/Addition-v0")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))
