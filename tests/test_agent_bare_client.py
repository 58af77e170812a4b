"""Agents that know only a base URL and a model name: the episode travels in the URL (or the environment).

The agents here are written for any OpenAI-compatible endpoint, with the openai SDK's default settings and no
agentgym header; AgentEnv must attribute each call to its own episode, with many envs at once, in threads and in
worker processes.
"""

import json
import os

import httpx
import numpy as np
import openai
import pytest

import agentgym
from agentgym.agents.env import AgentEnv
from tests.row_checks import assert_rows_are_the_episodes, recording, reward_of, say

TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two integers",
          "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]


def bare_agent(task, llm):
    """A plain openai-SDK agent with one tool and up to three calls; it reports every reply it received."""
    client = openai.OpenAI(base_url=llm.base_url, api_key="none")
    messages = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}]
    received, answer = [], ""
    for k in range(3):
        r = client.chat.completions.create(model=llm.model, messages=messages, tools=TOOLS, logprobs=True)
        choice = r.choices[0]
        received.append((choice.model_extra["token_ids"], [e.logprob for e in choice.logprobs.content]))
        msg = choice.message
        answer = msg.content or ""
        if msg.tool_calls:
            messages.append({"role": "assistant", "content": answer,
                             "tool_calls": [c.model_dump() for c in msg.tool_calls]})
            for call in msg.tool_calls:
                try:
                    args = json.loads(call.function.arguments)
                    out = str(int(args["a"]) + int(args["b"]))
                except Exception as e:  # noqa: BLE001 - a malformed call gets the error as its result
                    out = f"error: {e}"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": out})
        elif k == 0:
            messages += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": "Reply with the number only."}]
        else:
            break
    return {"reward": float(str(task["a"] + task["b"]) in answer), "received": received, "task": task}


def test_bare_clients_of_parallel_envs_reach_their_own_episodes(tiny_tokenizer):
    tok = tiny_tokenizer
    tasks = [{"a": a, "b": 1} for a in range(3)]
    envs = [AgentEnv(bare_agent, [t], tok, reward_fn=reward_of, timeout_s=30) for t in tasks]
    try:
        for env, task in zip(envs, tasks):
            obs, info = env.reset(seed=0)
            prompt = tok.decode(obs.tolist())
            assert f"What is {task['a']} + 1?" in prompt and '"name": "add"' in prompt  # its call, tools included
        actions = {}
        for k, env in reversed(list(enumerate(envs))):  # answered in another order than asked
            actions[k] = [say(tok, f"{k}{k}"), say(tok, str(k + 1))]
            obs, r, term, _, info = env.step(actions[k][0])
            assert not term and "Reply with the number only." in tok.decode(obs.tolist())
        for k, env in enumerate(envs):
            _, r, term, _, info = env.step(actions[k][1])
            result = info["result"]
            assert term and "error" not in info and result["task"] == tasks[k]
            assert [ids for ids, _ in result["received"]] == [a.tolist() for a in actions[k]]
            assert r == 1.0  # "k+1" is the sum a + 1
    finally:
        for env in envs:
            env.close()


def header_agent(task, llm):
    """An agent that keeps the server's one base URL and names its episode by the header (the older way)."""
    root = llm.base_url.split("/episodes/")[0] + "/v1"
    client = openai.OpenAI(base_url=root, api_key="none", default_headers=llm.headers)
    r = client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}])
    return r.choices[0].model_extra["token_ids"]


def test_a_call_naming_no_running_episode_is_refused_with_how_to_fix_it(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(bare_agent, [{"a": 2, "b": 3}], tok, reward_fn=reward_of, timeout_s=30)
    other = AgentEnv(header_agent, ["hello"], tok, timeout_s=30)
    body = {"model": "policy", "messages": [{"role": "user", "content": "hi"}]}
    try:
        env.reset(seed=0)
        other.reset(seed=0)  # the header keeps working: this agent's call is waiting for the policy
        running = env._episode.id
        root = env.base_url[: -len("/v1")]
        with httpx.Client(timeout=30) as http:
            r = http.post(env.base_url + "/chat/completions", json=body)  # the server's URL, no episode named
            assert r.status_code == 400 and r.json()["error"]["code"] == "episode_required"
            assert "base_url=llm.base_url" in r.json()["error"]["message"]
            assert "OPENAI_BASE_URL" in r.json()["error"]["message"]
            assert env.episode_url(running) == f"{root}/episodes/{running}/v1"
            for episode in ("no-such-episode", other._episode.id):  # unknown here, or another env's episode
                r = http.post(f"{root}/episodes/{episode}/v1/chat/completions", json=body)
                assert r.status_code == 404 and r.json()["error"]["code"] == "episode_not_found"
                assert "llm.base_url" in r.json()["error"]["message"]
            r = http.post(f"{root}/episodes/{running}/v1/chat/completions", json=body,
                          headers={"X-Agentgym-Episode": other._episode.id})
            assert r.status_code == 400 and r.json()["error"]["code"] == "episode_mismatch"
            assert http.get(f"{root}/episodes/{running}/v1/models").json()["data"][0]["id"] == "policy"
        # The openai SDK with its default settings reports the refusal at once, with the message.
        with pytest.raises(openai.BadRequestError, match="llm.base_url"):
            openai.OpenAI(base_url=env.base_url, api_key="none").chat.completions.create(**body)

        # None of this reached the running episodes: each agent gets exactly the policy's answer.
        _, _, term, _, info = other.step(say(tok, "hey"))
        assert term and info["result"] == say(tok, "hey").tolist()
        env.step(say(tok, "4"))
        _, r, term, _, info = env.step(say(tok, "5"))
        assert term and r == 1.0 and info["result"]["received"][1][0] == say(tok, "5").tolist()
        assert any("two episodes" in m for m in info["refused_calls"])  # kept with the episode its URL named
        with httpx.Client(timeout=30) as http:  # the episode is over: its URL now answers 410
            r = http.post(f"{root}/episodes/{running}/v1/chat/completions", json=body)
            assert r.status_code == 410 and r.json()["error"]["code"] == "episode_over"
    finally:
        env.close()
        other.close()


def environ_agent(task, llm):
    """An agent that builds its client from the environment alone: OPENAI_BASE_URL and OPENAI_API_KEY."""
    client = openai.OpenAI()
    r = client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}])
    return {"base_url": str(client.base_url).rstrip("/"), "api_key": client.api_key,
            "token_ids": r.choices[0].model_extra["token_ids"], "pid": os.getpid()}


@pytest.fixture
def no_openai_env(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_environment_variables_per_episode_in_worker_processes(tiny_tokenizer, no_openai_env):
    tok = tiny_tokenizer
    envs = [AgentEnv(environ_agent, [f"task {k}"], tok, isolation="process", timeout_s=30) for k in range(2)]
    try:
        for k in range(2):  # two episodes at once, each in its worker with its own variables; then a second round
            urls = []
            for env in envs:
                obs, _ = env.reset(seed=0)
                assert obs.size
                urls.append(env.episode_url(env._episode.id))
            for i, env in enumerate(envs):
                _, _, term, _, info = env.step(say(tok, f"{i}{k}"))
                result = info["result"]
                assert term and result["base_url"] == urls[i] and result["api_key"] == "agentgym"
                assert result["token_ids"] == say(tok, f"{i}{k}").tolist() and result["pid"] != os.getpid()
        assert "OPENAI_BASE_URL" not in os.environ  # this process's environment is left alone
    finally:
        for env in envs:
            env.close()
    off = AgentEnv(environ_agent, ["x"], tok, isolation="process", timeout_s=30, openai_env=False)
    try:
        obs, info = off.reset(seed=0)
        assert obs.size == 0 and "OPENAI_API_KEY" in info["error"]  # the SDK found no key: nothing was set
    finally:
        off.close()


def test_environment_variables_in_thread_mode_hold_one_episode_at_a_time(tiny_tokenizer, no_openai_env):
    tok = tiny_tokenizer
    one = AgentEnv(environ_agent, ["first"], tok, timeout_s=30, openai_env=True)
    two = AgentEnv(environ_agent, ["second"], tok, timeout_s=30, openai_env=True)
    try:
        obs, _ = one.reset(seed=0)
        url = one.episode_url(one._episode.id)
        assert obs.size and os.environ["OPENAI_BASE_URL"] == url
        with pytest.raises(RuntimeError, match="only one such episode can run at a time.*isolation='process'"):
            two.reset(seed=0)
        _, _, term, _, info = one.step(say(tok, "a"))
        assert term and info["result"]["base_url"] == url and info["result"]["token_ids"] == say(tok, "a").tolist()
        assert "OPENAI_BASE_URL" not in os.environ and "OPENAI_API_KEY" not in os.environ  # restored
        obs, _ = two.reset(seed=0)  # the variables are free again
        url = two.episode_url(two._episode.id)
        _, _, term, _, info = two.step(say(tok, "b"))
        assert term and info["result"]["base_url"] == url
    finally:
        one.close()
        two.close()
    assert "OPENAI_BASE_URL" not in os.environ


def failing_agents(task, llm):
    """Fails in the way its task names."""
    client = openai.OpenAI(base_url=llm.base_url, api_key="none")
    ask = [{"role": "user", "content": "hi"}]
    if task == "raises":
        raise ValueError("the tool exploded")
    if task == "wrong_model":  # a model name written for another endpoint; the agent swallows the 404
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)
        except openai.NotFoundError:
            return 0.0
    if task == "server_url":  # the server's URL, naming no episode
        root = llm.base_url.split("/episodes/")[0] + "/v1"
        openai.OpenAI(base_url=root, api_key="none").chat.completions.create(model=llm.model, messages=ask)
    if task == "late":
        client.chat.completions.create(model=llm.model, messages=ask)
        raise RuntimeError("failed after its first turn")
    return 1.0


def test_failed_episodes_say_why(tiny_policy):
    from agentgym.rollout.collector import Collector
    from agentgym.engines import SamplingParams, TransformersEngine

    model, tok = tiny_policy
    engine = TransformersEngine(model, tok, seed=0)
    tasks = ["raises", "wrong_model", "server_url", "late"]
    collector = Collector(lambda: AgentEnv(failing_agents, tasks, tok, engine=engine, timeout_s=30), engine,
                          SamplingParams(max_new_tokens=4), num_groups=4, group_size=1)
    try:
        episodes = collector.collect(seed=0)
        unplayed = {u["seed"]: u for u in collector.last_unplayed}
    finally:
        collector.close()
    assert sorted(unplayed) == [0, 1, 2] and all(isinstance(u["error"], str) for u in unplayed.values())
    assert "ValueError: the tool exploded" in unplayed[0]["error"]
    assert "refused 1 of its calls" in unplayed[1]["error"] and "'gpt-4o-mini' does not exist" in unplayed[1]["error"]
    assert unplayed[1]["refused_calls"][0].startswith("404 ")
    assert "BadRequestError" in unplayed[2]["error"] and "base_url=llm.base_url" in unplayed[2]["error"]
    assert [ep.group_id for ep in episodes] == [3] and len(episodes[0].turns) == 1
    assert "RuntimeError: failed after its first turn" in episodes[0].info["error"]


def _register_bare_env(name, isolation):
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    agentgym.register(name, lambda tokenizer, max_context_tokens=4096, engine=None: AgentEnv(
        bare_agent, tasks, tokenizer, engine=engine, max_context_tokens=max_context_tokens, timeout_s=60,
        isolation=isolation, reward_fn=reward_of))


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_trainer_trains_a_bare_openai_agent_on_the_engines_samples(tmp_path, isolation):
    """Two GRPO iterations over 4 envs stepped in parallel; every batch row is, token by token, what the engine
    sampled, and each agent received exactly its own episode's samples."""

    from agentgym.tiny import make_tiny_policy
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    model, tok = make_tiny_policy(seed=7)
    name = f"test/BareAgent-{isolation}-v0"
    _register_bare_env(name, isolation)
    cfg = TrainConfig(env=name, algo="grpo", algo_kwargs={"kl_coef": 0.0}, iterations=2, groups_per_iteration=2,
                      group_size=2, env_threads=4, max_new_tokens=6, lr=1e-3, run_dir=str(tmp_path), wandb=False,
                      progress=False, export=False, micro_batch_size=4, eval_episodes=0)
    try:
        trainer = Trainer(cfg, model=model, tokenizer=tok)
        try:
            with recording(trainer) as (sampled, batches):
                history = trainer.train()
        finally:
            trainer.close()
    finally:
        agentgym.registry.pop(name, None)
    assert len(history) == 2 and all(np.isfinite(h["reward_mean"]) for h in history)
    assert history[0]["engine_trainer_logprob_diff_max"] < 1e-4
    assert len(batches) == 2 and all(len(episodes) == 4 for episodes, _ in batches)  # no episode failed

    # Each agent received exactly its own episode's samples, and its first call asked its own question.
    for episodes, _ in batches:
        for ep in episodes:
            result = ep.info["result"]
            assert "error" not in ep.info and 2 <= len(ep.turns) <= 3
            received = [(list(ids), list(lps)) for ids, lps in result["received"]]
            assert received == [(t.action_ids, t.logprobs) for t in ep.turns]
            first_prompt = tok.decode(ep.turns[0].prompt_ids)
            assert f"What is {result['task']['a']} + {result['task']['b']}?" in first_prompt
            assert '"name": "add"' in first_prompt
    # The episodes' turns are exactly the engine's samples, in the contexts it saw.
    turns = [t for episodes, _ in batches for ep in episodes for t in ep.turns]
    assert sorted((t.prompt_ids, t.action_ids, t.logprobs) for t in turns) == sorted(sampled)

    # Each batch row is its episode's tokens; the trained positions are the sampled ids with their logprobs.
    assert_rows_are_the_episodes(batches)
