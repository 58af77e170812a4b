"""Automatic prompt optimization: the system-prompt wrapper, the critics, and the beam search."""

import json
import re

import httpx
import pytest

import agentgym
from agentgym.message_env import SystemPromptEnv, with_system_prompt
from agentgym.training.apo import APOConfig, env_system_prompt, make_prompted_env, optimize_prompt
from agentgym.training.critics import ChatCritic, EngineChat, OpenAIChat, critic_messages, parse_proposal
from agentgym.engines import Completion
from agentgym.message_env import MessageEnv
from agentgym.tiny import make_tiny_policy

GUESS = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}
WORDS = ("alpha", "beta", "gamma")


class KeywordsEnv(MessageEnv):
    """One turn: the reward is the fraction of WORDS in the reply."""

    max_turns = 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say the words."}], {}

    def step(self, text):
        found = [w for w in WORDS if w in text]
        reward = len(found) / len(WORDS)
        return [], reward, True, False, {"success": reward == 1.0, "missing": len(WORDS) - len(found)}


agentgym.register("test/Keywords-v0", KeywordsEnv)


class EchoSystemEngine:
    """A scripted policy: it replies with the content of the system message it was prompted with."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def generate(self, prompts, params, cache_keys=None):
        self.calls += 1
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            match = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", text, re.DOTALL)
            reply = self.tokenizer.encode(match.group(1) if match else "", add_special_tokens=False)
            reply.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
            out.append([Completion(reply, [0.0] * len(reply), "stop")] * params.n)
        return out

    def release(self, key):
        pass


def test_with_system_prompt_replaces_inserts_and_removes():
    msgs = [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}]
    assert with_system_prompt(msgs, "new") == [{"role": "system", "content": "new"}, {"role": "user", "content": "q"}]
    assert with_system_prompt(msgs[1:], "new") == with_system_prompt(msgs, "new")
    assert with_system_prompt(msgs, None) == [{"role": "user", "content": "q"}]
    assert msgs[0]["content"] == "old"  # the input is not modified


def test_prompted_env_refuses_a_token_level_env(tiny_tokenizer):
    from test_core import CountEnv

    agentgym.register("test/CountForAPO-v0", CountEnv)
    try:
        with pytest.raises(TypeError, match="'test/CountForAPO-v0' is a token-level env; prompt optimization sets"):
            make_prompted_env("test/CountForAPO-v0", "Be brief.", tiny_tokenizer)
    finally:
        del agentgym.registration.registry["test/CountForAPO-v0"]


def test_prompted_env_sets_the_system_message_of_any_message_env(tiny_tokenizer):
    env = make_prompted_env("agentgym/GuessNumber-v0", "Answer 2.", tiny_tokenizer, env_kwargs=GUESS)
    obs, info = env.reset(seed=0)
    assert info["messages"][0] == {"role": "system", "content": "Answer 2."}
    assert tiny_tokenizer.decode(obs).startswith("<|im_start|>system\nAnswer 2.<|im_end|>")
    assert isinstance(env.env, SystemPromptEnv) and env.env.max_turns == 2  # attributes read through
    env.env.system_prompt = None  # applies from the next reset
    _, info = env.reset(seed=0)
    assert [m["role"] for m in info["messages"]] == ["user"]
    env.close()
    arith = make_prompted_env("agentgym/Arithmetic-v0", "Use CALC.", tiny_tokenizer)
    _, info = arith.reset(seed=0)
    assert [m["content"] for m in info["messages"] if m["role"] == "system"] == ["Use CALC."]
    arith.close()
    assert env_system_prompt("agentgym/GuessNumber-v0", tiny_tokenizer, GUESS) is None
    assert env_system_prompt("agentgym/GuessNumber-v0", tiny_tokenizer, {"high": 3}).startswith("You are playing")


def test_parse_proposal():
    assert parse_proposal("Sure! <prompt>\n Be exact. </prompt> Hope it helps") == "Be exact."
    assert parse_proposal("<PROMPT>Unclosed tag") == "Unclosed tag"
    assert parse_proposal("  Just the prompt  ") == "Just the prompt"
    assert parse_proposal("<prompt>  </prompt>") is None
    assert parse_proposal("x" * 50, max_chars=10) == "x" * 10


def _config(tmp_path, **overrides):
    settings = dict(env="test/Keywords-v0", model="tiny", rounds=3, beam_width=2, num_edits=2, val_tasks=2,
                    val_samples=1, critique_tasks=2, max_new_tokens=4, run_dir=str(tmp_path / "apo"), wandb=False)
    return APOConfig(**{**settings, **overrides})


def test_beam_search_finds_the_best_prompt_with_a_scripted_critic(tmp_path, tiny_tokenizer):
    seen_failures = []

    def critic(prompt, failures):
        # Proposes a useless edit first and a useful one second: ranking must not depend on order.
        seen_failures.extend(failures)
        missing = [w for w in WORDS if w not in (prompt or "")]
        return [f"{prompt} junk", f"{prompt} {missing[0]}"] if missing else [f"{prompt} junk"]

    engine = EchoSystemEngine(tiny_tokenizer)
    result = optimize_prompt(_config(tmp_path), engine=engine, tokenizer=tiny_tokenizer, critic=critic)
    scores = [c.score for c in result.history]
    assert result.initial.prompt == "Be brief." and result.initial.score == 0.0
    assert result.best.score == max(scores) == 1.0
    assert set(WORDS) <= set(result.best.prompt.split())
    assert result.rounds == 3
    assert len({c.prompt for c in result.history}) == len(result.history)  # no prompt is scored twice
    for c in result.history[1:]:
        assert 1 <= c.round <= 3 and result.history[c.parent].round < c.round
    assert seen_failures and all("outcome: failed" in f and "missing=" in f for f in seen_failures)
    saved = json.loads((tmp_path / "apo" / "apo.json").read_text())
    assert saved["best_prompt"] == result.best.prompt
    assert saved["best_score"] == max(h["score"] for h in saved["history"])
    assert len((tmp_path / "apo" / "metrics.jsonl").read_text().splitlines()) == 4  # the initial prompt + 3 rounds


def test_time_budget_stops_the_search(tmp_path, tiny_tokenizer):
    cfg = _config(tmp_path, max_seconds=1e-9, eval_episodes=2)
    result = optimize_prompt(cfg, engine=EchoSystemEngine(tiny_tokenizer), tokenizer=tiny_tokenizer,
                             critic=lambda p, f: ["never scored"])
    assert result.rounds == 0 and len(result.history) == 1 and result.best is result.initial
    assert set(result.eval) == {"initial", "best"}


def test_engine_critic_with_a_tiny_model_runs_end_to_end(tmp_path):
    model, tok = make_tiny_policy(seed=0)
    cfg = _config(tmp_path, env="agentgym/GuessNumber-v0", env_kwargs=GUESS, rounds=1, max_new_tokens=1,
                  val_tasks=4, critique_tasks=4, critic_max_new_tokens=16)
    result = optimize_prompt(cfg, model=model, tokenizer=tok)
    # A random model proposes junk, but the search runs, and its best is the best it scored.
    assert result.initial.prompt is None
    assert result.best.score == max(c.score for c in result.history)
    assert json.loads((tmp_path / "apo" / "apo.json").read_text())["rounds"] == 1


def test_engine_chat_shortens_what_does_not_fit(tiny_tokenizer):
    model, _ = make_tiny_policy(seed=0, max_position_embeddings=900)
    from agentgym.engines import TransformersEngine

    chat = EngineChat(TransformersEngine(model, tiny_tokenizer), tiny_tokenizer, max_new_tokens=8)
    critic = ChatCritic(chat)
    failures = ["user: guess\nassistant: 7\noutcome: failed" * 8] * 3
    assert not chat.fits(critic_messages(None, failures))
    proposals = critic.propose(None, failures, num=2, seed=0)
    assert len(proposals) <= 2 and all(isinstance(p, str) for p in proposals)
    small, _ = make_tiny_policy(seed=0, max_position_embeddings=300)
    chat = EngineChat(TransformersEngine(small, tiny_tokenizer), tiny_tokenizer, max_new_tokens=8)
    with pytest.raises(ValueError, match="do not fit"):
        ChatCritic(chat).propose(None, failures, num=1, seed=0)


def test_openai_compatible_critic(tmp_path):
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        reply = "Here it is: <prompt>Guess 2 first, then follow the hints.</prompt>"
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
        })

    client = httpx.Client(transport=httpx.MockTransport(handler))
    chat = OpenAIChat("http://critic.test/v1", "critic-model", http_client=client)
    proposals = ChatCritic(chat).propose("Guess.", ["user: ?\nassistant: 9\noutcome: failed"], num=2, seed=3)
    assert proposals == ["Guess 2 first, then follow the hints."] * 2
    assert [r["seed"] for r in requests] == [3, 4] and requests[0]["model"] == "critic-model"
    assert "assistant: 9" in requests[0]["messages"][1]["content"]


def test_cli_runs_apo(tmp_path):
    from agentgym.workflow.cli import main

    run = tmp_path / "run"
    code = main(["train", "--algo", "apo", "--model", "tiny", "--env.low", "1", "--env.high", "3",
                 "--env.max_turns", "2", "--env.system_prompt", "null", "--max_new_tokens", "1", "--rounds", "1",
                 "--num_edits", "1", "--beam_width", "1", "--val_tasks", "4", "--critique_tasks", "4",
                 "--critic_max_new_tokens", "8", "--wandb", "false", "--run_dir", str(run)])
    assert code == 0
    saved = json.loads((run / "apo.json").read_text())
    assert saved["best_score"] == max(h["score"] for h in saved["history"])
    assert json.loads((run / "config.json").read_text())["algo"] == "apo"
    assert main(["train", "--algo", "apo", "--rounds", "-1"]) == 2
    assert main(["train", "--algo", "apo", "--lr", "0.1"]) == 2
