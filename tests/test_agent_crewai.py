"""A CrewAI crew (a solver agent with a tool, then a checker agent, run as a sequential process) as an AgentEnv,
trained with GRPO, every turn checked against the engine's samples.

Needs the ``crewai`` extra, which cannot share an environment with the ``openai-agents`` and ``agentscope`` extras
(crewai pins openai<3, mcp<2, pydantic<2.13): ``.ci/crewai`` runs this file in an environment of its own. Skipped
without crewai.
"""

import importlib.util
import os

import pytest

if importlib.util.find_spec("crewai") is None:
    pytest.skip("crewai is not installed (pip install -e '.[crewai]', or .ci/crewai)", allow_module_level=True)

# CrewAI sends usage telemetry and traces to its own servers unless told not to, before it is imported.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from crewai import LLM, Agent, Crew, Process, Task  # noqa: E402
from crewai.tools import tool  # noqa: E402

from agentgym import AgentEnv  # noqa: E402
from tests.row_checks import (  # noqa: E402
    assert_trained_on_the_samples, play_solver_tool_checker, reward_of, train_agent)


@tool("add")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def crewai_crew(task, llm):
    """The solver (with ``add``) answers, then the checker repeats the number; reward: the checker says the sum."""
    def model(name):  # "openai/" picks CrewAI's OpenAI client; the model name tags the calls with the agent's name
        return LLM(model="openai/" + llm.model_for(name), base_url=llm.base_url, api_key="none")

    solver = Agent(role="solver", goal="Solve additions", backstory="You add numbers with the add tool.",
                   llm=model("solver"), tools=[add])
    checker = Agent(role="checker", goal="Check answers", backstory="You repeat the number in the answer.",
                    llm=model("checker"))
    question = Task(description=f"What is {task['a']} + {task['b']}?", expected_output="a number", agent=solver)
    check = Task(description="Repeat the number in the answer.", expected_output="a number", agent=checker)
    out = Crew(agents=[solver, checker], tasks=[question, check], process=Process.sequential).kickoff()
    said = [t.raw for t in out.tasks_output]
    return {"reward": float(str(task["a"] + task["b"]) in out.raw), "said": said}


def test_crewai_crew_calls_its_tool_and_gets_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(crewai_crew, [{"a": 2, "b": 3}], tok, reward_fn=reward_of, timeout_s=30)
    try:
        info = play_solver_tool_checker(env, tok)
        assert info["result"]["said"] == ["It is 5.", "5"]  # each task's output
    finally:
        env.close()


def test_trainer_trains_only_the_crewai_solver_on_the_engines_samples():
    """Two GRPO iterations with train_agents={"solver"}: the solver's calls are the turns, token for token the
    engine's samples; the checker's calls are answered by the engine and make no rows."""
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    history, batches, sampled, tok = train_agent(crewai_crew, tasks, reward_fn=reward_of, train_agents={"solver"})
    turns, untrained = assert_trained_on_the_samples(history, batches, sampled)
    assert turns and all("You add numbers" in tok.decode(t.prompt_ids) for t in turns)
    assert all("You repeat the number" in tok.decode(p) for p, _, _ in untrained)
    # One checker call per episode (8), plus one more for each empty reply: CrewAI refuses an empty reply and asks
    # again (docs/agents.md), and that second call is the engine's too.
    empty = sum(not tok.decode(a, skip_special_tokens=True).strip() for _, a, _ in untrained)
    assert len(untrained) == 8 + empty
    for episodes, _ in batches:
        for ep in episodes:
            assert ep.info["result"]["said"][0] == tok.decode(ep.turns[-1].action_ids, skip_special_tokens=True)
