"""An AutoGen team (two AssistantAgents in a RoundRobinGroupChat, a tool, a streaming agent) as an AgentEnv, trained
with GRPO, every turn checked against the engine's samples.

Needs the ``autogen`` extra (part of ``dev``); skipped without it.
"""

import pytest

pytest.importorskip("autogen_agentchat")
pytest.importorskip("autogen_ext.models.openai")

from autogen_agentchat.agents import AssistantAgent  # noqa: E402
from autogen_agentchat.conditions import MaxMessageTermination  # noqa: E402
from autogen_agentchat.teams import RoundRobinGroupChat  # noqa: E402
from autogen_ext.models.openai import OpenAIChatCompletionClient  # noqa: E402

from agentgym import AgentEnv  # noqa: E402
from tests.row_checks import (  # noqa: E402
    assert_trained_on_the_samples, play_solver_tool_checker, reward_of, train_agent)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# A model name AutoGen does not know needs its capabilities spelled out.
MODEL_INFO = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
              "structured_output": False}


async def autogen_team(task, llm):
    """The solver (with the ``add`` tool) answers, then the checker (streaming) checks; reward: the sum is said."""
    def client(name):  # the model name tags the calls with the agent's name
        return OpenAIChatCompletionClient(model=llm.model_for(name), base_url=llm.base_url, api_key="none",
                                          model_info=MODEL_INFO, max_retries=0)

    # max_tool_iterations: after a tool runs the solver is asked again, with its tools (reflect_on_tool_use=True
    # would ask without them, a context that does not extend the last one).
    solver = AssistantAgent("solver", model_client=client("solver"), tools=[add], max_tool_iterations=3,
                            system_message="You solve additions. Use the add tool.")
    checker = AssistantAgent("checker", model_client=client("checker"), model_client_stream=True,
                             system_message="You check the solver's answer and repeat the number.")
    team = RoundRobinGroupChat([solver, checker], termination_condition=MaxMessageTermination(3))
    result = await team.run(task=f"What is {task['a']} + {task['b']}?")
    said = [(m.source, m.content) for m in result.messages if type(m).__name__ == "TextMessage"]
    return {"reward": float(str(task["a"] + task["b"]) in said[-1][1]), "said": said}


def test_autogen_team_calls_its_tool_and_gets_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(autogen_team, [{"a": 2, "b": 3}], tok, reward_fn=reward_of, timeout_s=30)
    try:
        info = play_solver_tool_checker(env, tok)
        # AutoGen ran add(2, 3) and asked the solver again with its tools; the checker's reply was streamed.
        assert info["result"]["said"] == [("user", "What is 2 + 3?"), ("solver", "It is 5."), ("checker", "5")]
    finally:
        env.close()


def test_trainer_trains_only_the_autogen_solver_on_the_engines_samples():
    """Two GRPO iterations with train_agents={"solver"}: the solver's calls are the turns, token for token the
    engine's samples; the checker's calls are answered by the engine and make no rows."""
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    history, batches, sampled, tok = train_agent(autogen_team, tasks, reward_fn=reward_of, train_agents={"solver"})
    turns, untrained = assert_trained_on_the_samples(history, batches, sampled)
    assert turns and all("You solve additions." in tok.decode(t.prompt_ids) for t in turns)
    assert len(untrained) == 8 and all("You check" in tok.decode(p) for p, _, _ in untrained)  # one per episode
    for episodes, _ in batches:
        for ep in episodes:  # each agent said what the engine sampled for it
            said = dict(ep.info["result"]["said"])
            assert said["solver"] == tok.decode(ep.turns[-1].action_ids, skip_special_tokens=True)
    checker_said = sorted(dict(ep.info["result"]["said"])["checker"] for eps, _ in batches for ep in eps)
    assert checker_said == sorted(tok.decode(a, skip_special_tokens=True) for _, a, _ in untrained)
