"""Agent programs in a worker process (AgentEnv(isolation="process")): a hung agent is killed, nothing leaks."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from agentgym.agents.env import AgentEnv, agent_name, emit_reward


def say(tok, text):
    return np.array(tok(text, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")])


def reporting_agent(task, llm):
    """Two calls (the second tagged), a reward emitted between them; reports what it saw and where it ran."""
    client = llm.client(max_retries=0)
    r = client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}], max_tokens=8)
    emit_reward(0.25)
    with agent_name("writer"):
        client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "again"}], max_tokens=8)
    return {"pid": os.getpid(), "token_ids": r.choices[0].model_extra["token_ids"], "text": r.choices[0].message.content}


def hanging_agent(task, llm):
    """Calls the LLM once, then hangs outside any LLM call (a tool that never returns) unless the task is 'ok';
    'stubborn' also hangs when its LLM call fails because the episode was ended."""
    client = llm.client(max_retries=0)
    try:
        client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}], max_tokens=4)
    except Exception:
        if task != "stubborn":
            raise
    if task == "ok":
        return 1.0
    time.sleep(3600)


def tool_starting_agent(task, llm):
    """Starts a long-running tool program, records its pid, then hangs waiting for it."""
    import subprocess

    tool = subprocess.Popen(["sleep", "3600"])
    with open(task, "w") as f:
        f.write(str(tool.pid))
    tool.wait()


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def hang_before_any_call(task, llm):
    time.sleep(3600)


def exiting_agent(task, llm):
    os._exit(3)


def unsendable_result(task, llm):
    return threading.Lock()


def _fail_on_load():
    raise RuntimeError("this object cannot be rebuilt here")


class Unloadable:
    """Pickles in the worker, fails to unpickle in the trainer."""

    def __reduce__(self):
        return _fail_on_load, ()


def unloadable_result(task, llm):
    return Unloadable()


def quick_agent(task, llm):
    return 3.0


def openai_loaded_agent(task, llm):
    import sys

    return float("openai" in sys.modules)


def raising_agent(task, llm):
    raise KeyError("no such tool")


async def async_agent(task, llm):
    client = llm.async_client(max_retries=0)
    await client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}], max_tokens=4)
    return 2.0


def _no_children_left(deadline_s=10.0):
    deadline = time.time() + deadline_s
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


def test_process_agent_gets_exact_ids_and_rewards_in_order(tiny_tokenizer):
    env = AgentEnv(reporting_agent, ["hello"], tiny_tokenizer, isolation="process", timeout_s=30,
                   reward_fn=lambda task, result: 1.0)
    try:
        obs, info = env.reset(seed=0)
        assert "hello" in tiny_tokenizer.decode(obs.tolist()) and info["agent"] == "default"
        action = say(tiny_tokenizer, "hi there")
        obs, r, term, _, info = env.step(action)
        # The reward was emitted before the second call: it is on the first turn, never the next.
        assert not term and r == pytest.approx(0.25) and info["agent"] == "writer"
        _, r, term, trunc, info = env.step(say(tiny_tokenizer, "done"))
        assert term and not trunc and r == 1.0
        result = info["result"]
        assert result["pid"] != os.getpid() and result["pid"] == env._process.pid  # it ran in the worker
        assert result["token_ids"] == action.tolist() and result["text"] == "hi there"
        obs, _ = env.reset(seed=0)  # the same worker plays the next episode
        assert obs.size and env._process.started == 1
    finally:
        env.close()
    assert _no_children_left()


def test_hung_agent_is_killed_and_training_goes_on(tiny_tokenizer):
    threads_before = threading.active_count()
    env = AgentEnv(hanging_agent, ["hang", "ok", "stubborn"], tiny_tokenizer, isolation="process", timeout_s=1.0,
                   stop_grace_s=0.5)
    try:
        env.reset(seed=0)
        pid = env._process.pid
        _, r, term, trunc, info = env.step(say(tiny_tokenizer, "a"))
        assert trunc and not term and r == 0.0 and "within 1.0 s" in info["error"]
        assert not env._process.alive()
        with pytest.raises(ProcessLookupError):  # the hung worker is gone, not left sleeping
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        obs, _ = env.reset(seed=1)  # the next episode starts a fresh worker
        _, r, term, trunc, info = env.step(say(tiny_tokenizer, "b"))
        assert term and r == 1.0 and env._process.started == 2, (term, trunc, r, info, env._process.started)

        env.reset(seed=0)
        env.reset(seed=1)  # a reset mid-call: the agent's call fails, it unwinds, and its worker plays on
        assert env._process.started == 2
        env.reset(seed=2)
        obs, _ = env.reset(seed=1)  # the stubborn agent hangs after its call failed: killed after stop_grace_s
        assert env._process.started == 3 and obs.size
        _, r, term, _, _ = env.step(say(tiny_tokenizer, "c"))
        assert term and r == 1.0
    finally:
        env.close()
    assert _no_children_left()
    deadline = time.time() + 10
    while threading.active_count() > threads_before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_killing_a_hung_agent_also_ends_the_programs_it_started(tiny_tokenizer, tmp_path):
    pid_file = tmp_path / "tool.pid"
    env = AgentEnv(tool_starting_agent, [str(pid_file)], tiny_tokenizer, isolation="process", timeout_s=1.0)
    try:
        obs, info = env.reset(seed=0)
        assert info["episode_over"] and "within 1.0 s" in info["error"]
        tool_pid = int(pid_file.read_text())
        assert _running(tool_pid)  # the episode is not over until it is stepped: the tool still runs
        env.step([])
        deadline = time.time() + 10
        while _running(tool_pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(tool_pid)
    finally:
        env.close()


def test_process_failures_end_the_episode(tiny_tokenizer):
    cases = [
        (hang_before_any_call, "within 0.5 s"),
        (exiting_agent, "exited with code 3"),
        (unsendable_result, "could not be sent back from its process"),
        (unloadable_result, "could not be read from its process: RuntimeError: this object cannot be rebuilt"),
        (raising_agent, "KeyError: 'no such tool'"),
    ]
    for agent, message in cases:
        env = AgentEnv(agent, [{}], tiny_tokenizer, isolation="process", timeout_s=0.5 if agent is
                       hang_before_any_call else 30, failure_reward=-1.0)
        try:
            obs, info = env.reset(seed=0)
            assert obs.size == 0 and info["episode_over"] and message in info["error"], (agent, info)
            _, r, term, trunc, info = env.step([])
            assert r == -1.0 and (term or trunc) and message in info["error"]
        finally:
            env.close()
    assert _no_children_left()


def test_async_agent_in_a_process(tiny_tokenizer):
    env = AgentEnv(async_agent, ["x"], tiny_tokenizer, isolation="process", timeout_s=30)
    try:
        env.reset(seed=0)
        _, r, term, _, _ = env.step(say(tiny_tokenizer, "y"))
        assert term and r == 2.0
    finally:
        env.close()


def test_process_isolation_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="does not pickle.*module level"):
        AgentEnv(lambda task, llm: 1.0, [{}], tiny_tokenizer, isolation="process")
    with pytest.raises(ValueError, match="isolation must be 'thread' or 'process'"):
        AgentEnv(reporting_agent, [{}], tiny_tokenizer, isolation="container")
    with pytest.raises(ValueError, match="start_method must be one of"):
        AgentEnv(reporting_agent, [{}], tiny_tokenizer, isolation="process", start_method="thread")
    env = AgentEnv(reporting_agent, [threading.Lock()], tiny_tokenizer, isolation="process")
    try:
        obs, info = env.reset(seed=0)
        assert info["episode_over"] and "task could not be sent" in info["error"]
    finally:
        env.close()


def test_worker_start_does_not_count_against_the_timeout(tiny_tokenizer):
    # Starting a worker (a new interpreter importing this module) takes far longer than 0.2 s.
    env = AgentEnv(quick_agent, [{}], tiny_tokenizer, isolation="process", timeout_s=0.2)
    try:
        obs, info = env.reset(seed=0)
        assert info["episode_over"] and info["error"] is None
        _, r, term, _, _ = env.step([])
        assert term and r == 3.0
    finally:
        env.close()
    # Nor does importing openai, which most agents need for their first call (most of a second here).
    env = AgentEnv(openai_loaded_agent, [{}], tiny_tokenizer, isolation="process", timeout_s=0.2)
    try:
        env.reset(seed=0)
        _, r, term, _, _ = env.step([])
        assert term and r == 1.0
    finally:
        env.close()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_die_with_the_trainer(tmp_path):
    """A trainer killed with SIGKILL cannot kill its workers: they notice and end themselves and their tools."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "tool.pid"
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from agentgym.agents.env import AgentEnv\n"
        "from agentgym.tiny import make_tiny_tokenizer\n"
        "from test_agent_process import tool_starting_agent\n"
        f"env = AgentEnv(tool_starting_agent, [{str(pid_file)!r}], make_tiny_tokenizer(), isolation='process',"
        " timeout_s=600)\n"
        "env.reset(seed=0)\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        tool_pid = int(pid_file.read_text())
        assert _running(tool_pid)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    deadline = time.time() + 15
    while _running(tool_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(tool_pid)
