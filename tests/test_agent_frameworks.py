"""An agent written with LangGraph (LangChain's ChatOpenAI in a StateGraph) as an AgentEnv, trained with Trainer.

Needs the ``agents`` extra (part of ``dev``); skipped without it.
"""

import threading
from typing import Annotated, TypedDict

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langchain_openai")

from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402

from agentgym import AgentEnv  # noqa: E402
from tests.row_checks import assert_trained_on_the_samples, say, train_agent  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """add two integers"""
    return a + b


class State(TypedDict):
    messages: Annotated[list, add_messages]


RECEIVED: list[tuple[list[str], list[float]]] = []
"""Every reply the LangGraph agents got: its tokens and logprobs, as the OpenAI response carried them."""
_received_lock = threading.Lock()


def langgraph_agent(task, llm):
    """solve (may call ``add`` through a ToolNode, then solve again) -> final answer; reward: the sum is in it."""
    # The episode's base URL alone routes the calls: no header, no other setting.
    chat = ChatOpenAI(base_url=llm.base_url, model=llm.model, api_key="none", max_tokens=40, max_retries=0,
                      logprobs=True).bind_tools([add])

    def ask(messages):
        reply = chat.invoke(messages)
        entries = reply.response_metadata["logprobs"]["content"]
        with _received_lock:
            RECEIVED.append(([e["token"] for e in entries], [e["logprob"] for e in entries]))
        return reply

    def solve(state):
        return {"messages": [ask(state["messages"])]}

    def final(state):
        nudge = HumanMessage("Reply with the number only.")
        return {"messages": [nudge, ask(state["messages"] + [nudge])]}

    graph = StateGraph(State)
    graph.add_node("solve", solve)
    graph.add_node("tools", ToolNode([add]))
    graph.add_node("final", final)
    graph.add_edge(START, "solve")
    graph.add_conditional_edges("solve", tools_condition, {"tools": "tools", END: "final"})
    graph.add_edge("tools", "solve")
    graph.add_edge("final", END)
    question = HumanMessage(f"What is {task['a']} + {task['b']}?")
    out = graph.compile().invoke({"messages": [question]}, {"recursion_limit": 12})
    return 1.0 if str(task["a"] + task["b"]) in out["messages"][-1].content else 0.0


def test_langgraph_agent_runs_tools_and_gets_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    env = AgentEnv(langgraph_agent, [{"a": 2, "b": 3}], tok, timeout_s=30)
    RECEIVED.clear()
    try:
        obs, _ = env.reset(seed=0)
        assert "What is 2 + 3?" in tok.decode(obs.tolist()) and '"name": "add"' in tok.decode(obs.tolist())
        call = say(tok, '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
        obs, r, term, _, info = env.step(call)
        assert not term  # the ToolNode ran add(2, 3) and the graph asked again with its result
        assert "<tool_response>\n5\n</tool_response>" in tok.decode(obs.tolist())
        obs, r, term, _, _ = env.step(say(tok, "It is 5."))
        assert not term and "Reply with the number only." in tok.decode(obs.tolist())
        _, r, term, trunc, info = env.step(say(tok, "5"))
        assert term and not trunc and r == 1.0 and info["result"] == 1.0
        sent = [call, say(tok, "It is 5."), say(tok, "5")]
        assert [tokens for tokens, _ in RECEIVED] == [[tok.decode([t]) for t in ids.tolist()] for ids in sent]
    finally:
        env.close()


@pytest.mark.slow
def test_trainer_trains_a_langgraph_agent_on_the_engines_samples():
    """Two GRPO iterations; every batch row is, token by token, what the engine sampled and the agent received."""
    tasks = [{"a": a, "b": b} for a in range(2) for b in range(2)]
    RECEIVED.clear()
    history, batches, sampled, tok = train_agent(langgraph_agent, tasks)
    turns, untrained = assert_trained_on_the_samples(history, batches, sampled)
    # The episodes' turns are exactly the engine's samples, in the contexts it saw (2 turns each: solve, final).
    assert len(turns) == len(sampled) == 2 * 2 * 2 * 2 and untrained == []
    # The agents got those very tokens and logprobs in their OpenAI responses.
    assert sorted(RECEIVED) == sorted(([tok.decode([i]) for i in ids], lps) for _, ids, lps in sampled)
