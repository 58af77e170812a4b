"""Run agent programs in a child process that can be killed: :class:`AgentProcess`.

An agent that hangs outside its LLM calls (a blocking tool, an endless loop) cannot be stopped in a thread; in a
process it can. :class:`~agentgym.agents.env.AgentEnv` with ``isolation="process"`` keeps one worker process per
env and runs its episodes there one after another; a worker whose agent overstays is killed and the next episode
starts a fresh one.

The agent still reaches the policy over HTTP (``llm.base_url``, the episode's own URL), so only three things
cross the pipe: the task and :class:`~agentgym.agents.env.LLM` going in (with the environment variables to set
before the episode: ``OPENAI_BASE_URL`` and the like, see ``AgentEnv(openai_env=...)``),
:func:`~agentgym.agents.env.emit_reward` values coming out (each acknowledged before the agent goes on, so a reward is
always recorded before the agent's next LLM call), and the agent's result or error at the end. Tasks and results
must pickle; with the ``spawn`` or ``forkserver`` start method so must the agent (a module-level function).

The worker leads a process group of its own, so a kill also ends the programs its tools started, and it kills that
group itself when the process that started it dies. It is a daemon process: an agent may start subprocesses but
not ``multiprocessing`` children of its own. A worker starts (imports included, ``openai`` among them: nearly every
agent builds a client, and importing it takes most of a second on a small CPU) before its first episode's clock
does.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from agentgym.agents.context import _current_episode

START_METHODS = ("spawn", "forkserver", "fork")
_START_LOCK = threading.Lock()


def call_agent(agent: Callable[..., Any], task: Any, llm: Any) -> tuple[str, Any]:
    """Run one episode of ``agent``: ``("done", result)``, or ``("error", message)`` when it raised."""
    try:
        return "done", (asyncio.run(agent(task, llm)) if inspect.iscoroutinefunction(agent) else agent(task, llm))
    except BaseException as e:  # noqa: BLE001 - the agent's failure ends its episode, never the trainer
        return "error", "".join(traceback.format_exception_only(type(e), e)).strip()


class _RemoteEpisode:
    """The episode as the agent's process sees it: :func:`emit_reward` sends the value and waits for the ack."""

    def __init__(self, conn: Any, episode_id: str, lock: threading.Lock):
        self.conn, self.id, self.lock = conn, episode_id, lock
        self.closed = False

    def emit(self, value: float) -> None:
        with self.lock:
            if self.closed:  # e.g. a thread the agent left running: the pipe now belongs to the next episode
                raise RuntimeError("emit_reward() called after the agent returned: its episode is over")
            self.conn.send(("reward", self.id, float(value)))
            self.conn.recv()


def _orphan_watch(trainer_pid: int) -> None:
    """End the worker's whole process group once the process that started it is gone (it was killed, say, and
    never got to kill the worker): a hung agent and its tools must not outlive the trainer."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(trainer_pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    if hasattr(os, "killpg"):
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def _worker_main(conn: Any, agent: Callable[..., Any], trainer_pid: int) -> None:
    """The worker process: run one episode per ``("run", id, task, llm, environ)`` message (``environ``: variables
    to set first, or None) until ``("close",)`` or EOF."""
    if hasattr(os, "setsid"):
        os.setsid()  # a process group of its own: a kill also takes the tools the agent started (subprocesses)
    threading.Thread(target=_orphan_watch, args=(trainer_pid,), daemon=True).start()
    lock = threading.Lock()
    try:
        import openai  # noqa: F401 - imported now, so that the agent's first ``llm.client()`` is not on its clock
    except Exception:  # noqa: BLE001 - absent or broken: the agents that use it will say so themselves
        pass
    conn.send(("ready",))  # imports done: the episode clock may start
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            return
        _, episode_id, task, llm, environ = msg
        if environ:
            os.environ.update(environ)  # this worker's own environment: the episode's, until the next one's
        remote = _RemoteEpisode(conn, episode_id, lock)
        token = _current_episode.set(remote)
        try:
            kind, item = call_agent(agent, task, llm)
        finally:
            _current_episode.reset(token)
        reply = (kind, episode_id, item)
        with lock:
            remote.closed = True
            try:
                conn.send(reply)
            except Exception as e:  # noqa: BLE001 - e.g. a result that does not pickle
                conn.send(("error", episode_id, f"the agent's result could not be sent back from its process: "
                                                f"{type(e).__name__}: {e}"))


class AgentProcess:
    """A worker process that runs an agent's episodes one at a time, and the thread that listens to it.

    Args:
        agent: ``agent(task, llm)`` or an ``async`` function.
        start_method: ``spawn`` (default: safe in a process that runs threads and torch), ``forkserver`` or
            ``fork`` (no pickling of the agent; only safe when the parent holds no locks other threads may own).
        start_timeout_s: the longest a new worker may take to start (imports included; not counted against the
            agent's own timeout).
    """

    def __init__(self, agent: Callable[..., Any], start_method: str = "spawn", start_timeout_s: float = 120.0):
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        if start_method != "fork":
            main = sys.modules.get("__main__")
            if getattr(agent, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
                raise ValueError(
                    f"isolation='process' with start_method={start_method!r} imports the agent in a new process, "
                    f"and {agent!r} was defined interactively (a notebook or REPL); define it in a module, use "
                    "start_method='fork', or isolation='thread'"
                )
            try:
                pickle.dumps(agent)
            except Exception as e:
                raise ValueError(
                    f"isolation='process' with start_method={start_method!r} sends the agent to a new process, "
                    f"and {agent!r} does not pickle ({type(e).__name__}: {e}); define it at module level, "
                    "use start_method='fork', or isolation='thread'"
                ) from None
        self.agent, self.start_method, self.start_timeout_s = agent, start_method, float(start_timeout_s)
        self._ctx = multiprocessing.get_context(start_method)
        self._proc: Any = None
        self._conn: Any = None
        self._listener: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._episode: Any = None
        self.started = 0
        """How many worker processes were started (a new one after each kill)."""

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before the first episode and after a kill)."""
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Whether the worker process is running."""
        return self._proc is not None and self._proc.is_alive()

    def _start(self) -> None:
        with _START_LOCK:  # a worker forked meanwhile by another env would inherit this child end of the pipe
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_worker_main, args=(child, self.agent, os.getpid()), daemon=True,
                                     name="agentgym-agent")
            proc.start()
            child.close()
        self.started += 1
        self._proc, self._conn = proc, parent
        # Wait for the worker's imports here, so that they never count against the agent's timeout.
        ready = False
        try:
            ready = parent.poll(self.start_timeout_s) and parent.recv() == ("ready",)
        except (EOFError, OSError):
            pass
        if not ready:
            self.kill()
            raise RuntimeError(f"the agent's worker process did not start within {self.start_timeout_s} s "
                               f"(exit code {proc.exitcode}); see its output above")
        self._listener = threading.Thread(target=self._listen, args=(proc, parent), daemon=True,
                                          name="agentgym-agent-listener")
        self._listener.start()

    def run(self, episode: Any, task: Any, llm: Any, environ: dict[str, str] | None = None) -> None:
        """Start ``episode`` (an :class:`agentgym.agents.env._Episode`) in the worker, with the environment
        variables ``environ`` set there first; its events arrive on ``episode.events`` as in a thread:
        ``("done", result)`` or ``("error", message)``."""
        if not self.alive():
            self.kill()  # a worker that died on its own: release its pipe and listener
            self._start()
        self._episode = episode
        try:
            with self._send_lock:
                self._conn.send(("run", episode.id, task, llm, environ))  # pickles first: nothing is sent on failure
        except Exception as e:  # noqa: BLE001 - a task that does not pickle ends its episode
            self._episode = None
            episode.events.put(("error", f"the task could not be sent to the agent's process: "
                                         f"{type(e).__name__}: {e}"))

    def _listen(self, proc: Any, conn: Any) -> None:
        """Forward the worker's messages to the running episode until the worker exits."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # noqa: BLE001 - a result this process cannot unpickle; the stream is intact
                ep = self._episode
                if ep is not None:
                    self._episode = None
                    ep.events.put(("error", f"the agent's result could not be read from its process: "
                                            f"{type(e).__name__}: {e}"))
                continue
            ep = self._episode
            current = ep is not None and ep.id == msg[1]
            if msg[0] == "reward":
                if current:
                    ep.emit(msg[2])
                with self._send_lock:
                    try:
                        conn.send(("ack",))
                    except OSError:
                        break
            elif current:
                self._episode = None
                ep.events.put((msg[0], msg[2]))
        _kill_group(proc)  # the tools it left behind; before the join, while its pid cannot be reused
        proc.join(timeout=1.0)
        ep = self._episode
        if ep is not None and self._proc is proc:
            self._episode = None
            ep.events.put(("error", f"the agent's process exited with code {proc.exitcode}"))

    def finish(self, episode: Any, grace_s: float) -> None:
        """End ``episode``: wait up to ``grace_s`` for its agent to return, else kill the worker."""
        if self._episode is not episode:
            return
        deadline = time.monotonic() + max(0.0, grace_s)
        while self._episode is episode and self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._episode is episode:
            self.kill()

    def kill(self) -> None:
        """Kill the worker (its episode, if any, is dropped); the next :meth:`run` starts a new one."""
        proc, conn, listener = self._proc, self._conn, self._listener
        self._episode = None
        self._proc = self._conn = self._listener = None
        if proc is None:
            return
        _kill_group(proc)  # the worker and whatever it started
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5.0)
        conn.close()
        if listener is not None:
            listener.join(timeout=5.0)

    def close(self) -> None:
        """Stop the worker: ask it to exit, then kill it if it does not."""
        proc = self._proc
        if proc is None:
            return
        if self._episode is None and proc.is_alive():
            try:
                with self._send_lock:
                    self._conn.send(("close",))
                proc.join(timeout=2.0)
            except OSError:
                pass
        self.kill()


def _kill_group(proc: Any) -> None:
    """SIGKILL the process group ``proc`` leads, unless ``proc`` was already reaped (its pid may be reused)."""
    popen = getattr(proc, "_popen", None)
    if popen is None or popen.returncode is not None:  # not started, or reaped (read without reaping it now)
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, OSError):
        pass
