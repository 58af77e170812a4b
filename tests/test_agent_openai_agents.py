"""An OpenAI Agents SDK program (a solver that hands off to a calculator with a function tool, then a checker run
after it) as an AgentEnv, trained with GRPO, every turn checked against the engine's samples.

Needs the ``openai-agents`` extra (part of ``dev``); skipped without it.
"""

import pytest

pytest.importorskip("agents")

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from agentgym import AgentEnv  # noqa: E402
from tests.row_checks import assert_trained_on_the_samples, reward_of, say, train_agent  # noqa: E402


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def received_logprobs(result):
    """The logprobs of each model reply of a run, as the SDK received them."""
    return [[lp.logprob for part in item.content for lp in part.logprobs or []]
            for response in result.raw_responses for item in response.output if item.type == "message"]


async def agents_sdk_team(task, llm):
    """solver (may hand off to the calculator, which has ``add``) -> checker; reward: the checker says the sum."""
    client = AsyncOpenAI(base_url=llm.base_url, api_key="none", max_retries=0)

    def model(name):  # chat completions (the SDK's default is the Responses API); the name tags the calls
        return OpenAIChatCompletionsModel(model=llm.model_for(name), openai_client=client)

    settings = ModelSettings(top_logprobs=0)  # logprobs of the sampled tokens come back with each reply
    calculator = Agent(name="calculator", instructions="Compute sums with the add tool.", model=model("calculator"),
                       tools=[add], model_settings=settings)
    solver = Agent(name="solver", instructions="Answer additions; hand off to the calculator to compute.",
                   model=model("solver"), handoffs=[calculator], model_settings=settings)
    checker = Agent(name="checker", instructions="Repeat the number in the answer.", model=model("checker"))
    run_config = RunConfig(tracing_disabled=True)  # no trace export to the OpenAI platform
    solved = await Runner.run(solver, f"What is {task['a']} + {task['b']}?", run_config=run_config)
    checked = await Runner.run(checker, f"Answer: {solved.final_output}", run_config=run_config)
    return {"reward": float(str(task["a"] + task["b"]) in checked.final_output),
            "said": [solved.last_agent.name, solved.final_output, checked.final_output],
            "logprobs": received_logprobs(solved)}


def test_agents_sdk_hands_off_calls_its_tool_and_gets_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(agents_sdk_team, [{"a": 2, "b": 3}], tok, reward_fn=reward_of, timeout_s=30)
    try:
        obs, info = env.reset(seed=0)
        assert info["agent"] == "solver" and '"name": "transfer_to_calculator"' in tok.decode(obs.tolist())
        obs, _, term, _, info = env.step(say(tok, '<tool_call>{"name": "transfer_to_calculator", "arguments": {}}'
                                                  '</tool_call>'))
        assert not term and info["agent"] == "calculator" and info["context_reset"]
        assert '"name": "add"' in tok.decode(obs.tolist()) and "What is 2 + 3?" in tok.decode(obs.tolist())
        obs, _, term, _, info = env.step(say(tok, '<tool_call>{"name":"add","arguments":{"a":2,"b":3}}</tool_call>'))
        # The SDK ran add(2, 3): the calculator's next context is its last one, the call as sampled, the result.
        assert not term and info["agent"] == "calculator" and "context_reset" not in info
        assert tok.decode(obs.tolist()).startswith("\n<|im_start|>tool\n<tool_response>\n5\n</tool_response>")
        obs, _, term, _, info = env.step(say(tok, "5"))
        assert not term and info["agent"] == "checker" and "Answer: 5" in tok.decode(obs.tolist())
        _, r, term, _, info = env.step(say(tok, "5"))
        assert term and r == 1.0 and info["result"]["said"] == ["calculator", "5", "5"]
    finally:
        env.close()


def test_trainer_trains_the_agents_sdk_solver_not_the_checker_on_the_engines_samples():
    """Two GRPO iterations with train_agents={"solver", "calculator"}: their calls are the turns, token for token
    the engine's samples, and the SDK received those very logprobs; the checker's calls make no rows."""
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    history, batches, sampled, tok = train_agent(agents_sdk_team, tasks, reward_fn=reward_of,
                                                 train_agents={"solver", "calculator"})
    turns, untrained = assert_trained_on_the_samples(history, batches, sampled)
    assert turns and all("Answer additions" in tok.decode(t.prompt_ids) for t in turns)
    assert len(untrained) == 8 and all("Repeat the number" in tok.decode(p) for p, _, _ in untrained)
    for episodes, _ in batches:
        for ep in episodes:
            result = ep.info["result"]
            assert result["said"][1] == tok.decode(ep.turns[-1].action_ids, skip_special_tokens=True)
            assert result["logprobs"] == [t.logprobs for t in ep.turns]


async def responses_api_agent(task, llm):
    """An agent on the SDK's default model class, which calls the Responses API."""
    from agents import set_default_openai_client

    set_default_openai_client(AsyncOpenAI(base_url=llm.base_url, api_key="none", max_retries=0),
                              use_for_tracing=False)
    agent = Agent(name="solver", instructions="Answer.", model=llm.model)
    return (await Runner.run(agent, task, run_config=RunConfig(tracing_disabled=True))).final_output


def test_the_responses_api_is_refused_with_the_sdk_setting_to_change(tiny_tokenizer):
    env = AgentEnv(responses_api_agent, ["hi"], tiny_tokenizer, timeout_s=30)
    try:
        obs, info = env.reset(seed=0)
        assert obs.size == 0 and info["episode_over"] and "NotFoundError" in info["error"]
        assert "set_default_openai_api('chat_completions')" in info["error"]
        assert "OpenAIChatCompletionsModel" in info["refused_calls"][0]
    finally:
        env.close()
