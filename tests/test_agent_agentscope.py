"""An AgentScope program (a solver agent with a function tool, streaming as AgentScope does by default, then a
checker agent) as an AgentEnv, trained with GRPO, every turn checked against the engine's samples.

Needs the ``agentscope`` extra (part of ``dev``; Python 3.11 or newer); skipped without it.
"""

import pytest

pytest.importorskip("agentscope")

from agentscope.agent import Agent  # noqa: E402
from agentscope.credential import OpenAICredential  # noqa: E402
from agentscope.message import UserMsg  # noqa: E402
from agentscope.model import OpenAIChatModel  # noqa: E402
from agentscope.permission import PermissionBehavior, PermissionDecision  # noqa: E402
from agentscope.tool import FunctionTool, Toolkit  # noqa: E402

from agentgym import AgentEnv  # noqa: E402
from tests.row_checks import (  # noqa: E402
    assert_trained_on_the_samples, play_solver_tool_checker, reward_of, train_agent)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a (`int`): the first number.
        b (`int`): the second number.
    """
    return a + b


async def agentscope_team(task, llm):
    """The solver (with ``add``) answers, the checker repeats the number; reward: the checker says the sum."""
    credential = OpenAICredential(api_key="none", base_url=llm.base_url)

    def model(name):  # the model name tags the calls with the agent's name; no retries of a refused call
        return OpenAIChatModel(credential=credential, model=llm.model_for(name), max_retries=0,
                               client_kwargs={"max_retries": 0})

    # Without a permission AgentScope asks the user before each tool call; nobody is there to answer.
    allowed = PermissionDecision(behavior=PermissionBehavior.ALLOW, message="arithmetic is always allowed")
    solver = Agent(name="solver", system_prompt="You solve additions with the add tool.", model=model("solver"),
                   toolkit=Toolkit(tools=[FunctionTool(add, permission=allowed)]))
    checker = Agent(name="checker", system_prompt="Repeat the number in the answer.", model=model("checker"))
    answer = await solver.reply(UserMsg(name="user", content=f"What is {task['a']} + {task['b']}?"))
    checked = await checker.reply(UserMsg(name="solver", content=answer.get_text_content() or ""))
    said = [answer.get_text_content() or "", checked.get_text_content() or ""]
    return {"reward": float(str(task["a"] + task["b"]) in said[1]), "said": said}


def test_agentscope_agent_calls_its_tool_and_gets_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(agentscope_team, [{"a": 2, "b": 3}], tok, reward_fn=reward_of, timeout_s=30)
    try:
        info = play_solver_tool_checker(env, tok)
        assert info["result"]["said"] == ["It is 5.", "5"]  # AgentScope streamed both replies
    finally:
        env.close()


def test_trainer_trains_only_the_agentscope_solver_on_the_engines_samples():
    """Two GRPO iterations with train_agents={"solver"}: the solver's (streamed) calls are the turns, token for
    token the engine's samples; the checker's calls are answered by the engine and make no rows."""
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    history, batches, sampled, tok = train_agent(agentscope_team, tasks, reward_fn=reward_of,
                                                 train_agents={"solver"})
    turns, untrained = assert_trained_on_the_samples(history, batches, sampled)
    assert turns and all("You solve additions" in tok.decode(t.prompt_ids) for t in turns)
    assert len(untrained) == 8 and all("Repeat the number" in tok.decode(p) for p, _, _ in untrained)
    for episodes, _ in batches:
        for ep in episodes:
            assert ep.info["result"]["said"][0] == tok.decode(ep.turns[-1].action_ids, skip_special_tokens=True)
    checker_said = sorted(ep.info["result"]["said"][1] for eps, _ in batches for ep in eps)
    assert checker_said == sorted(tok.decode(a, skip_special_tokens=True) for _, a, _ in untrained)
