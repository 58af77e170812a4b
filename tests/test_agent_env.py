"""Agent programs as environments: real openai clients against the env's real endpoint."""

import json
import threading

import numpy as np
import pytest

import agentgym
from agentgym.agents.env import AgentEnv, agent_name, emit_reward

TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two integers",
          "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]


def tool_agent(task, llm):
    """An openai-SDK agent: asks, runs the tool call it gets back, asks again, answers."""
    client = llm.client()
    messages = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}]
    r = client.chat.completions.create(model=llm.model, messages=messages, tools=TOOLS, max_tokens=40)
    msg = r.choices[0].message
    seen = {"first_token_ids": r.choices[0].model_extra.get("token_ids"), "tool_calls": msg.tool_calls}
    messages.append({"role": "assistant", "content": msg.content or "", "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in msg.tool_calls or []]})
    for call in msg.tool_calls or []:
        args = json.loads(call.function.arguments)
        emit_reward(0.25)  # a well-formed tool call earns a little
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
    r2 = client.chat.completions.create(model=llm.model, messages=messages, tools=TOOLS, max_tokens=8)
    seen["answer"] = r2.choices[0].message.content
    task["seen"] = seen
    return 1.0 if str(task["a"] + task["b"]) in (seen["answer"] or "") else 0.0


def say(tok, text):
    return np.array(tok(text, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")])


def test_tool_calls_rewards_and_exact_ids(tiny_tokenizer):
    task = {"a": 2, "b": 3}
    env = AgentEnv(tool_agent, [task], tiny_tokenizer, timeout_s=30)
    try:
        obs, info = env.reset(seed=0)
        prompt = tiny_tokenizer.decode(obs.tolist())
        assert "What is 2 + 3?" in prompt and "add" in prompt  # the tools reached the chat template
        action = say(tiny_tokenizer, '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
        obs2, r, term, trunc, info = env.step(action)
        assert not term and r == pytest.approx(0.25)  # the emitted reward lands on the turn that made the call
        assert "<|im_start|>tool" in tiny_tokenizer.decode(obs2.tolist()) or info.get("context_reset")
        _, r, term, trunc, info = env.step(say(tiny_tokenizer, "The answer is 5."))
        assert term and not trunc and r == 1.0 and info["result"] == 1.0
        seen = task["seen"]
        assert seen["first_token_ids"] == action.tolist()  # the agent got exactly the policy's ids
        assert seen["tool_calls"][0].function.name == "add"
        assert json.loads(seen["tool_calls"][0].function.arguments) == {"a": 2, "b": 3}
        assert seen["answer"] == "The answer is 5."
    finally:
        env.close()


def failing_agent(task, llm):
    llm.client().chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    raise ValueError("tool exploded")


def silent_agent(task, llm):
    return 0.5


def looping_agent(task, llm):
    client = llm.client(max_retries=0)
    while True:  # never returns on its own: the env's timeout must end it
        client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "again"}], max_tokens=4)


def test_failures_end_the_episode_and_leak_nothing(tiny_tokenizer):
    threads_before = threading.active_count()
    env = AgentEnv(failing_agent, [{}], tiny_tokenizer, failure_reward=-1.0, timeout_s=10)
    env.reset(seed=0)
    _, r, term, trunc, info = env.step(say(tiny_tokenizer, "x"))
    assert term and r == -1.0 and "ValueError: tool exploded" in info["error"]

    env2 = AgentEnv(silent_agent, [{}], tiny_tokenizer)
    obs, info = env2.reset(seed=0)
    assert obs.size == 0 and info["episode_over"] and info["error"] is None
    _, r, term, _, info = env2.step([])
    assert term and r == 0.5

    env3 = AgentEnv(looping_agent, [{}], tiny_tokenizer, timeout_s=5.0)
    env3.reset(seed=0)
    obs, _, term, _, _ = env3.step(say(tiny_tokenizer, "a"))
    assert not term and obs.size  # answered; the agent called again at once and now waits for an answer
    env3.close()
    env2.close()
    env.close()
    import time

    deadline = time.time() + 10
    while threading.active_count() > threads_before and time.time() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads_before


def test_timeout_truncates(tiny_tokenizer):
    def slow_agent(task, llm):
        import time

        time.sleep(3)
        return 1.0

    env = AgentEnv(slow_agent, [{}], tiny_tokenizer, timeout_s=0.5)
    obs, info = env.reset(seed=0)
    assert info["episode_over"] and "within 0.5 s" in info["error"]
    env.close()


def two_agents(task, llm):
    client = llm.client()
    with agent_name("writer"):
        w = client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "write"}],
                                           max_tokens=4)
    c = client.chat.completions.create(model=llm.model_for("critic"), messages=[{"role": "user", "content": "judge"}],
                                       max_tokens=4)
    with agent_name("writer"):
        client.chat.completions.create(model=llm.model, messages=[
            {"role": "user", "content": "write"}, {"role": "assistant", "content": w.choices[0].message.content},
            {"role": "user", "content": "again: " + (c.choices[0].message.content or "")}], max_tokens=4)
    return 1.0


def test_selective_optimization_by_agent_name(tiny_policy):
    from agentgym.engines import TransformersEngine

    model, tok = tiny_policy
    engine = TransformersEngine(model, tok)
    env = AgentEnv(two_agents, [{}], tok, engine=engine, train_agents={"writer"})
    try:
        obs, info = env.reset(seed=0)
        assert info["agent"] == "writer" and "write" in tok.decode(obs.tolist())
        obs, _, term, _, info = env.step(say(tok, "ok"))
        # The critic's call was answered by the engine, not stepped; the next step is the writer's again.
        assert not term and info["agent"] == "writer" and env.stats["untrained_calls"] == 1
        _, r, term, _, _ = env.step(say(tok, "done"))
        assert term and r == 1.0
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_trainer_trains_an_openai_sdk_agent(tmp_path, tiny_policy, isolation):
    """A few GRPO steps on an agent program (in a thread, or in worker processes); the batch rows are exactly
    the engine's samples."""
    from agentgym.rollout.batch import to_batch
    from agentgym.tiny import make_tiny_policy
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    model, tok = make_tiny_policy(seed=3)
    tasks = [{"a": a, "b": b} for a in range(3) for b in range(3)]
    agentgym.register("test/ToolAgent-v0", lambda tokenizer, max_context_tokens=4096, engine=None: AgentEnv(
        tool_agent, tasks, tokenizer, engine=engine, max_context_tokens=max_context_tokens, timeout_s=60,
        isolation=isolation))
    try:
        cfg = TrainConfig(env="test/ToolAgent-v0", algo="grpo", algo_kwargs={"kl_coef": 0.0}, iterations=2,
                          groups_per_iteration=2, group_size=2, max_new_tokens=6, lr=1e-3, run_dir=str(tmp_path),
                          wandb=False, progress=False, export=False, micro_batch_size=4, eval_episodes=0)
        trainer = Trainer(cfg, model=model, tokenizer=tok)
        episodes = trainer.collect()
        batch, _ = to_batch(episodes)
        rows = 0
        for ep in episodes:
            for turn in ep.turns:
                assert len(turn.action_ids) == len(turn.logprobs) > 0
        for row in range(batch.batch_size[0]):
            ids = batch["input_ids"][row][batch["loss_mask"][row]].tolist()
            rows += 1
            assert ids  # every row trains on the policy's own ids
        history = trainer.train()
        assert len(history) == 2 and all(np.isfinite(h["reward_mean"]) for h in history)
        assert history[0]["engine_trainer_logprob_diff_max"] < 1e-4
        trainer.close()
    finally:
        agentgym.registry.pop("test/ToolAgent-v0", None)
