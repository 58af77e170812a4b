"""Any agent program as a token-level environment: each of its LLM calls is a step.

The agent is a function ``agent(task, llm)`` (or ``async def``) that talks to an OpenAI-compatible endpoint through
``llm.base_url`` and ``llm.model`` with any client (the openai SDK, LangGraph, AutoGen, ...), with its default
settings: ``openai.OpenAI(base_url=llm.base_url, api_key="none")`` is enough. :class:`AgentEnv` runs it in its own
thread (or, with ``isolation="process"``, in a worker process that is killed when the agent overstays its timeout)
and serves its calls on 127.0.0.1: a call of a *trained* agent becomes the observation of a step (its context as
token ids, through the model's chat template, tools included) and waits for the policy's action; the agent then
receives a normal OpenAI response built from exactly those ids. Calls of other agents are answered by ``engine``
and make no training rows.

Episodes: every episode has a base URL of its own, ``http://127.0.0.1:PORT/episodes/ID/v1``, so the URL alone says
which episode a call belongs to, with any number of envs and episodes running at once. The header
``X-Agentgym-Episode`` (:attr:`LLM.headers`) names the episode too, for clients that keep one base URL. A call that
names no running episode is refused with a 4xx that says how to pass ``llm.base_url``; it is never attributed to
another episode. Agents that build their client from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` get them per episode
with ``openai_env`` (see :class:`AgentEnv`).

Rewards: the agent's return value (a number, or ``reward_fn(task, result)``) and :func:`emit_reward` calls made
while the agent runs; an emitted reward is attributed to the latest completed trained turn.

Agent names: a call is tagged by the ``model`` it asks for (``llm.model_for("critic")``), by the header
``X-Agent-Name``, or by :func:`agent_name` around the code that makes it (for clients from :meth:`LLM.client`).
"""

from __future__ import annotations

import contextvars
import os
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from agentgym.agents.context import (  # noqa: F401 (agent_name, emit_reward: public here too)
    _current_agent,
    _current_episode,
    agent_name,
    emit_reward,
    trainable_filter,
)
from agentgym.agents.process import AgentProcess, call_agent
from agentgym.core import TokenEnv

AGENT_HEADER = "X-Agent-Name"
EPISODE_HEADER = "X-Agentgym-Episode"
@dataclass
class LLM:
    """What an agent needs to reach the policy: an OpenAI-compatible base URL and a model name.

    ``base_url`` is this episode's own endpoint: any client given it (and ``model``) is attributed to this
    episode, with no other setting.
    """

    base_url: str
    model: str
    api_key: str = "agentgym"
    episode_id: str = ""

    @property
    def environ(self) -> dict[str, str]:
        """The environment variables that point a client built from them (``openai.OpenAI()``) at this episode:
        ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (the openai SDK's and most frameworks' defaults) and the older
        ``OPENAI_API_BASE`` that some frameworks read first. ``AgentEnv(openai_env=True)`` sets them; a tool program
        the agent starts can get them too: ``subprocess.run(cmd, env={**os.environ, **llm.environ})``."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_BASE": self.base_url, "OPENAI_API_KEY": self.api_key}

    def model_for(self, agent: str) -> str:
        """The model name that tags a call as agent ``agent`` (for clients built outside :meth:`client`)."""
        return f"{self.model}:{agent}"

    @property
    def headers(self) -> dict[str, str]:
        """The header that names this episode. ``base_url`` already does; a client that must keep another base
        URL (a proxy, say) can send these instead, e.g. ``default_headers=llm.headers``."""
        return {EPISODE_HEADER: self.episode_id}

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this endpoint; calls inside :func:`agent_name` blocks are tagged."""
        import httpx
        import openai

        http = httpx.Client(event_hooks={"request": [_tag_agent]}, timeout=kwargs.pop("timeout", 600))
        return openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key, http_client=http, default_headers=self.headers, **kwargs
        )

    def async_client(self, **kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` client for this endpoint (tagged like :meth:`client`)."""
        import httpx
        import openai

        async def tag(request: Any) -> None:
            _tag_agent(request)

        http = httpx.AsyncClient(event_hooks={"request": [tag]}, timeout=kwargs.pop("timeout", 600))
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, http_client=http, default_headers=self.headers, **kwargs
        )


def _tag_agent(request: Any) -> None:
    """An httpx request hook: name the agent of the :func:`agent_name` block the call is made in."""
    name = _current_agent.get()
    if name is not None:
        request.headers[AGENT_HEADER] = name


@dataclass
class _Call:
    """One LLM call waiting for its completion."""

    prompt_ids: list[int]
    params: Any
    agent: str
    future: Future = field(default_factory=Future)


class _Episode:
    """The bridge between the agent's thread and the env: calls and the end flow through one queue."""

    MAX_REFUSALS = 10
    """How many refused calls an episode keeps the message of (a looping agent may make thousands)."""

    def __init__(self, episode_id: str):
        self.id = episode_id
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.pending_reward = 0.0
        self.refused: list[str] = []
        self.refused_count = 0

    def emit(self, value: float) -> None:
        with self.lock:
            self.pending_reward += value

    def refuse(self, message: str) -> None:
        """Keep the error answer the server gave one of this episode's calls."""
        with self.lock:
            self.refused_count += 1
            if len(self.refused) < self.MAX_REFUSALS:
                self.refused.append(message)

    def take_reward(self) -> float:
        with self.lock:
            r, self.pending_reward = self.pending_reward, 0.0
            return r


class AgentEnv(TokenEnv):
    """An agent program as a :class:`~agentgym.core.TokenEnv`.

    ``reset`` starts the agent on a task and returns the context of its first trained LLM call; ``step(ids)``
    answers that call with ``ids`` and returns the next trained call's new tokens. When the next call's context
    does not extend the previous context plus the action (the agent rewrote its history), ``obs`` is the whole new
    context and ``info["context_reset"]`` is True, with ``info["mismatch"]`` classifying why: ``chat_template``
    (same text, the template rendered it differently), ``retokenization`` (same text, different ids) or ``other``.

    The episode ends when the agent returns (``terminated``), raises (``terminated``, ``info["error"]``, reward
    ``failure_reward``), or exceeds ``timeout_s`` (``truncated``, ``info["error"]``); its pending and later LLM
    calls then fail, so an agent blocked on the LLM unwinds and its thread ends. An agent that hangs elsewhere (a
    blocking tool, an endless loop) can only be stopped with ``isolation="process"``: its worker is killed and
    the next episode starts a new one. An agent that returns without
    a trained call gives ``reset`` an empty observation with ``info["episode_over"]``: step it once with an empty
    action to collect the outcome (collectors skip such episodes).

    Why an episode failed is in ``info["error"]`` (of ``reset`` when it ended before its first trained call, else of
    the last ``step``): the agent's exception, its timeout or its process's death, or, when the agent returned
    without a trained call after the server refused some of its calls, those refusals. ``info["refused_calls"]``
    lists the error answers (status and message, the first :attr:`_Episode.MAX_REFUSALS`) the server gave the
    episode's calls, whenever there were any (a wrong model name, a context too long, an unsupported option...).

    Args:
        agent: ``agent(task, llm) -> result`` or an ``async`` function.
        tasks: a sequence of tasks (``reset(seed=s)`` picks ``tasks[s % len(tasks)]``, or one at random without a
            seed) or a callable ``tasks(np_random) -> task``.
        tokenizer: the policy's tokenizer with its chat template.
        engine: answers calls of agents that do not train (selective optimization); also renders prompts.
        train_agents: names (a set) or a regex of agents whose calls are steps; None: all.
        reward_fn: ``reward_fn(task, result) -> float``; default: the result itself when it is a number, else 0.
        failure_reward: the reward of an episode whose agent raised or timed out.
        timeout_s: the longest an episode may wait for the agent between two calls.
        max_context_tokens: as for every TokenEnv.
        served_model: the model name the endpoint serves.
        isolation: ``"thread"`` (the agent runs in a thread of this process: no pickling, but an agent that hangs
            outside its LLM calls cannot be stopped and its thread outlives the episode) or ``"process"`` (a
            worker process per env, see :mod:`agentgym.agents.process`: an agent that overstays ``timeout_s`` is
            killed with the programs it started; tasks and results must pickle).
        start_method: how the worker process starts with ``isolation="process"``: ``spawn`` (default; the agent
            must pickle, i.e. be a module-level function), ``forkserver`` or ``fork``.
        stop_grace_s: when an episode ends while its agent still runs (a reset mid-episode), how long the agent
            may take to unwind after its LLM calls start failing before its process is killed (process isolation)
            or left to finish alone (thread isolation).
        openai_env: set ``OPENAI_BASE_URL``, ``OPENAI_API_BASE`` and ``OPENAI_API_KEY`` to the episode's
            (:attr:`LLM.environ`) while its agent runs, for agents that build their client from the environment
            (``openai.OpenAI()``). Default: on with ``isolation="process"`` (each worker process has an
            environment of its own, set before each episode), off with ``"thread"``. With ``"thread"`` the
            variables are the whole process's: only one episode at a time may hold them, and a second env's
            ``reset`` while one runs raises RuntimeError (so: one env at a time, e.g. a trainer with one group of
            one episode); they are restored when the episode ends.
    """

    def __init__(
        self,
        agent: Callable[..., Any],
        tasks: Sequence[Any] | Callable[[np.random.Generator], Any],
        tokenizer: Any,
        engine: Any = None,
        train_agents: str | set[str] | None = None,
        reward_fn: Callable[[Any, Any], float] | None = None,
        failure_reward: float = 0.0,
        timeout_s: float = 60.0,
        max_context_tokens: int = 4096,
        served_model: str = "policy",
        isolation: str = "thread",
        start_method: str = "spawn",
        stop_grace_s: float = 5.0,
        openai_env: bool | None = None,
    ):
        super().__init__(len(tokenizer), max_context_tokens=max_context_tokens, tokenizer=tokenizer)
        self.agent, self.tasks, self.engine = agent, tasks, engine
        self.is_trained = trainable_filter(train_agents)
        self.reward_fn, self.failure_reward, self.timeout_s = reward_fn, failure_reward, timeout_s
        self.served_model = served_model
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', got {isolation!r}")
        self.isolation, self.stop_grace_s = isolation, float(stop_grace_s)
        self._process: AgentProcess | None = AgentProcess(agent, start_method) if isolation == "process" else None
        self.openai_env = (isolation == "process") if openai_env is None else bool(openai_env)
        from agentgym.chat import stop_token_ids

        self.stop_token_ids = stop_token_ids(tokenizer)
        self._server: Any = None
        self._episodes: dict[str, _Episode] = {}
        self._episode: _Episode | None = None
        self._thread: threading.Thread | None = None
        self._call: _Call | None = None
        self._context: list[int] = []
        self._count = 0
        self._token = uuid.uuid4().hex[:12]  # episode ids of this env: "TOKEN-N", never those of another env
        self.stats = {"untrained_calls": 0, "context_resets": 0}

    # -- the endpoint -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The env's OpenAI-compatible server (started on first use). A call here must name its episode with the
        ``X-Agentgym-Episode`` header; agents get their episode's own URL, :meth:`episode_url`, as ``llm.base_url``."""
        if self._server is None:
            from agentgym.engines.server import create_app, start_server

            renderer = self.engine if self.engine is not None else _Renderer(self.tokenizer, self.max_context_tokens)
            app = create_app(renderer, self.served_model, handler=self._handle, check_episode=self._check_episode,
                             on_error=self._record_refusal)
            self._server = start_server(app)
        return self._server.url

    def episode_url(self, episode_id: str) -> str:
        """The base URL that names episode ``episode_id`` by itself: ``http://127.0.0.1:PORT/episodes/ID/v1``."""
        root = self.base_url[: -len("/v1")]
        return f"{root}/episodes/{episode_id}/v1"

    def _find_episode(self, in_url: str | None, headers: dict[str, str]) -> _Episode:
        """The running episode a call names (by its URL, else its header); a RequestError when there is none."""
        from agentgym.engines.server import RequestError

        in_header = headers.get(EPISODE_HEADER.lower()) or None
        if in_url and in_header and in_url != in_header:
            raise RequestError(
                f"This call names two episodes: {in_url!r} in its URL and {in_header!r} in its "
                f"{EPISODE_HEADER} header. Use the episode's llm.base_url alone (the header is not needed).",
                code="episode_mismatch",
            )
        episode_id = in_url or in_header
        if not episode_id:
            raise RequestError(
                "This call names no episode. The AgentEnv serves each episode at a base URL of its own: build the "
                "agent's client with base_url=llm.base_url, e.g. openai.OpenAI(base_url=llm.base_url, "
                "api_key=llm.api_key), or set OPENAI_BASE_URL to llm.base_url (AgentEnv(openai_env=True)); "
                f"episodes are served at {self.base_url[: -len('/v1')]}/episodes/<id>/v1, not at /v1.",
                code="episode_required",
            )
        ep = self._episodes.get(episode_id)
        if ep is None and not self._was_episode(episode_id):
            raise RequestError(
                f"No episode {episode_id!r} runs here: the agent must call the base URL its own episode gives it, "
                "llm.base_url (e.g. openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key)), or send that "
                f"episode's {EPISODE_HEADER} header (llm.headers).",
                status=404, code="episode_not_found",
            )
        if ep is None or ep.cancelled.is_set():
            raise _episode_over("this episode is over: the environment no longer answers its calls")
        return ep

    def _was_episode(self, episode_id: str) -> bool:
        """Whether ``episode_id`` names an episode of this env that has ended."""
        token, _, n = episode_id.rpartition("-")
        return token == self._token and n.isdigit() and 0 < int(n) <= self._count

    def _check_episode(self, in_url: str | None, headers: dict[str, str]) -> None:
        """Refuse a call that names no running episode before its body is read (runs in the server's loop)."""
        self._find_episode(in_url, headers)

    def _record_refusal(self, in_url: str | None, headers: dict[str, str], error: Any) -> None:
        """Keep an error answer with the running episode it was given to (the reason an agent may swallow)."""
        episode_id = in_url or headers.get(EPISODE_HEADER.lower())
        ep = self._episodes.get(episode_id or "")
        if ep is not None and not ep.cancelled.is_set():
            ep.refuse(f"{error.status} {error.message}")

    def _handle(self, prompt_ids: list[int], params: Any, info: Any) -> Any:
        """Answer one LLM call of the agent (runs in a server worker thread)."""
        headers = {k.lower(): v for k, v in info.headers.items()}
        ep = self._find_episode(info.episode, headers)
        name = (
            headers.get(AGENT_HEADER.lower())
            or _agent_from_model(info.model or "", self.served_model)
            or "default"
        )
        if not self.is_trained(name):
            if self.engine is None:
                raise RuntimeError(f"agent {name!r} does not train and the env has no engine to answer it")
            self.stats["untrained_calls"] += 1
            return self.engine.generate([prompt_ids], params)[0][0]
        call = _Call(list(prompt_ids), params, name)
        ep.events.put(("call", call))
        while True:  # a call queued just as the episode ended must not hold its server thread forever
            try:
                return call.future.result(timeout=0.5)
            except FutureTimeout:
                if ep.cancelled.is_set():
                    raise _episode_over("this episode is over: the environment no longer answers its calls")

    # -- the episode ------------------------------------------------------------------------------------------
    def _pick_task(self, seed: int | None) -> Any:
        if callable(self.tasks):
            return self.tasks(self.np_random)
        if seed is not None:
            return self.tasks[seed % len(self.tasks)]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _run(self, ep: _Episode, task: Any, llm: LLM) -> None:
        _current_episode.set(ep)
        ep.events.put(call_agent(self.agent, task, llm))

    def _stop_episode(self, grace_s: float | None = None) -> None:
        """End the current episode: fail its pending and later calls, then let its agent unwind for ``grace_s``
        (default ``stop_grace_s``); with process isolation an agent still running after that is killed."""
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        ep, self._episode = self._episode, None
        if ep is None:
            return
        ep.cancelled.set()
        if self._call is not None and not self._call.future.done():
            self._call.future.set_exception(_episode_over("episode ended"))
        # Fail the calls the agent makes from now on, then give its thread a moment to unwind.
        while True:
            try:
                kind, item = ep.events.get_nowait()
            except queue.Empty:
                break
            if kind == "call" and not item.future.done():
                item.future.set_exception(_episode_over("episode ended"))
        if self._process is not None:
            self._process.finish(ep, grace_s)
        elif self._thread is not None:
            self._thread.join(timeout=grace_s)
        _PROCESS_ENVIRON.release(self)
        self._episodes.pop(ep.id, None)
        self._call = None

    def _next_event(self, ep: _Episode) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return ep.events.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return "timeout", f"the agent neither called the LLM nor returned within {self.timeout_s} s"

    def _reset(self, seed: int | None, options: dict | None) -> tuple[np.ndarray, dict]:
        self._stop_episode()
        task = (options or {}).get("task", None)
        if task is None:
            task = self._pick_task(seed)
        self._count += 1
        ep = _Episode(f"{self._token}-{self._count}")
        llm = LLM(self.episode_url(ep.id), self.served_model, episode_id=ep.id)
        if self.openai_env and self._process is None:
            _PROCESS_ENVIRON.claim(self, llm.environ)  # raises while another env's episode holds the variables
        self._episodes[ep.id] = ep
        self._episode = ep
        self._task = task
        if self._process is not None:
            self._process.run(ep, task, llm, environ=llm.environ if self.openai_env else None)
        else:
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=ctx.run, args=(self._run, ep, task, llm), daemon=True)
            self._thread.start()
        kind, item = self._next_event(ep)
        if kind == "call":
            self._call = item
            self._context = list(item.prompt_ids)
            return np.asarray(item.prompt_ids, dtype=np.int64), {"task": task, "agent": item.agent}
        self._pending_end = (kind, item)
        info = {"task": task, "episode_over": True, "error": _error(kind, item)}
        return np.zeros(0, dtype=np.int64), _with_refusals(info, ep, kind, item, trained=False)

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        from agentgym.engines import Completion

        ep = self._episode
        assert ep is not None
        if self._call is None:  # the agent ended before its first trained call
            kind, item = self._pending_end
            return self._finish(kind, item, 0.0, trained=False)
        call, ids = self._call, action.tolist()
        stops = set(call.params.stop_token_ids or self.stop_token_ids)
        reason = "stop" if ids and ids[-1] in stops else "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        logprobs = getattr(self, "_action_logprobs", None) or [0.0] * len(ids)
        call.future.set_result(Completion(ids, list(logprobs)[: len(ids)], reason, text))
        self._action_logprobs = None
        before = self._context + ids
        self._call = None
        kind, item = self._next_event(ep)
        reward = ep.take_reward()
        if kind != "call":
            return self._finish(kind, item, reward, trained=True)
        self._call = item
        new = list(item.prompt_ids)
        if new[: len(before)] == before:
            self._context = new
            return np.asarray(new[len(before) :], dtype=np.int64), reward, False, False, {"agent": item.agent}
        self.stats["context_resets"] += 1
        self._context = new
        info = {"agent": item.agent, "context_reset": True, "mismatch": self._classify(before, new)}
        return np.asarray(new, dtype=np.int64), reward, False, False, info

    def set_action_logprobs(self, logprobs: Sequence[float]) -> None:
        """The engine's logprobs of the next action, returned to the agent in its response (optional)."""
        self._action_logprobs = list(logprobs)

    def _classify(self, before: list[int], new: list[int]) -> str:
        a = self.tokenizer.decode(before, skip_special_tokens=False)
        b = self.tokenizer.decode(new, skip_special_tokens=False)
        if b.startswith(a):
            return "retokenization"
        strip = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
        if strip(b).startswith(strip(a)):
            return "chat_template"
        return "other"

    def _finish(
        self, kind: str, item: Any, reward: float, trained: bool
    ) -> tuple[np.ndarray, float, bool, bool, dict]:
        empty = np.zeros(0, dtype=np.int64)
        ep = self._episode
        if ep is not None:
            reward += ep.take_reward()
        if kind == "done":
            if self.reward_fn is not None:
                reward += float(self.reward_fn(self._task, item))
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                reward += float(item)
            self._stop_episode()
            return empty, reward, True, False, _with_refusals({"result": item}, ep, kind, item, trained)
        self._stop_episode(grace_s=0.0 if kind == "timeout" else None)  # a timed-out agent gets no more time
        info = _with_refusals({"error": _error(kind, item)}, ep, kind, item, trained)
        return empty, reward + self.failure_reward, kind == "error", kind == "timeout", info

    def close(self) -> None:
        self._stop_episode()
        if self._process is not None:
            self._process.close()
        if self._server is not None:
            self._server.stop()
            self._server = None
        super().close()


class _Renderer:
    """What the server needs of an engine when every call is answered by the env: the tokenizer."""

    def __init__(self, tokenizer: Any, max_len: int):
        from agentgym.chat import stop_token_ids

        self.tokenizer, self.max_model_len = tokenizer, max_len
        self.eos_token_ids = sorted(stop_token_ids(tokenizer))

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("calls are answered by the AgentEnv handler")

    def release(self, key: str) -> None:
        pass


def _episode_over(message: str) -> Exception:
    """The error a call of a finished episode gets: HTTP 410, which clients report at once and do not retry."""
    from agentgym.engines.server import RequestError

    return RequestError(message, status=410, code="episode_over")


class _ProcessEnviron:
    """``os.environ`` is one per process: in thread isolation at most one episode at a time may set its
    ``OPENAI_*`` variables there (the process-wide state this module cannot avoid), and they are restored after."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: Any = None
        self.saved: dict[str, str | None] = {}

    def claim(self, owner: Any, values: dict[str, str]) -> None:
        with self.lock:
            if self.owner is not None and self.owner is not owner:
                raise RuntimeError(
                    "AgentEnv(openai_env=True, isolation='thread') sets OPENAI_BASE_URL for the whole process, and "
                    "another env's episode holds it now: in thread isolation only one such episode can run at a "
                    "time (one env: e.g. groups_per_iteration=1, group_size=1). Use isolation='process' (each "
                    "worker process has its own environment), or build the agent's client with "
                    "base_url=llm.base_url."
                )
            if self.owner is None:
                self.saved = {k: os.environ.get(k) for k in values}
            self.owner = owner
            os.environ.update(values)

    def release(self, owner: Any) -> None:
        with self.lock:
            if self.owner is not owner:
                return
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self.owner, self.saved = None, {}


_PROCESS_ENVIRON = _ProcessEnviron()


def _with_refusals(info: dict, ep: _Episode | None, kind: str, result: Any, trained: bool) -> dict:
    """``info`` with the episode's refused calls; an agent that returned without a trained call after refusals
    failed because of them, and ``info["error"]`` says so."""
    if ep is None or not ep.refused_count:
        return info
    with ep.lock:
        refused, count = list(ep.refused), ep.refused_count
    info["refused_calls"] = refused
    if kind == "done" and not trained and not info.get("error"):
        info["error"] = (f"the agent returned {result!r:.80} without a trained LLM call; the server refused "
                         f"{count} of its calls, the first with: {refused[0]}")
    return info


def _agent_from_model(model: str, served: str) -> str | None:
    if model.startswith(served + ":"):
        return model[len(served) + 1 :]
    if model and model != served:
        return model
    return None


def _error(kind: str, item: Any) -> str | None:
    return None if kind == "done" else (item if isinstance(item, str) else repr(item))
