"""Rollouts on a Ray cluster: N actors, each with its own engine and envs, fed tasks of whole groups.

:class:`RayCollector` has the :class:`~agentgym.rollout.collector.Collector` interface (``collect(seed) -> list[Episode]``)
plus ``load_weights(state_dict)``, so the trainer uses it unchanged (``--rollout_workers N``):

* **tasks**: a collection of ``num_groups`` groups is split into tasks of ``groups_per_task`` consecutive groups;
  group ``g`` resets ``group_size`` envs with seed ``seed + g`` (as the in-process collector does); a task has the
  unique id ``"<collection>-<first group>"``; a worker batches all envs of its task in one engine;
* **streaming**: each worker holds at most ``max_inflight`` tasks; results are taken with ``ray.wait`` as they
  finish and the freed worker gets the next task, so fast workers take more tasks (:meth:`RayCollector.stream`);
* **weights**: after each update the trainer's state dict is put in the object store once (``ray.put``) and every
  worker loads it before its next task (an actor runs its calls in order); each result carries the weights
  version it was sampled with, and a stale one is an error;
* **faults**: a worker that dies is replaced by a new actor (with the current weights) and its unfinished tasks
  are requeued; results are keyed by task id, so a task is counted once even if it were delivered twice.

Workers rebuild the policy from its transformers config and tokenizer (:class:`~agentgym.models.PolicySpec`)
and get the weights through the object store, so they need no access to the trainer's model files.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from agentgym.rollout.batch import Episode
from agentgym.models import PolicySpec


@dataclass(frozen=True)
class RolloutTask:
    """Groups to roll out: ``num_groups`` groups of ``group_size`` episodes, group ``j`` reset with ``seed + j``."""

    task_id: str
    """unique over the collector's lifetime: ``"<collection>-<index>"``"""
    index: int
    """the position of the task's first group in its collection"""
    seed: int
    """the env reset seed of the first group (also seeds sampling, so a requeued task samples what the lost one
    would have)"""
    num_groups: int = 1
    """consecutive groups in the task"""


@dataclass
class RolloutResult:
    """A finished task, as a worker returns it."""

    task_id: str
    episodes: list[Episode]
    weights_version: int
    """the version of the weights the episodes were sampled with"""
    worker_pid: int
    seconds: float


@dataclass
class WorkerConfig:
    """Everything a rollout worker needs to build its envs and engine (picklable)."""

    env: str
    """registered env id"""
    policy: PolicySpec
    """the policy's architecture and tokenizer (weights come separately)"""
    params: Any
    """the engine's SamplingParams"""
    group_size: int
    """episodes per group"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the env"""
    max_context_tokens: int = 2048
    """longest context an episode may reach"""
    threads: int = 1
    """torch threads of the worker's engine"""
    env_threads: int = 0
    """step the worker's envs in a thread pool of this size"""
    engine: str = "transformers"
    """the engine's registered name (:func:`agentgym.engines.register_engine`; registered in the worker process)"""
    engine_fn: Callable[[Any, Any], Any] | None = None
    """builds the engine from (model, tokenizer) instead of ``engine``"""


class RolloutWorker:
    """One rollout process (a Ray actor): an engine and the envs of its tasks, rolling out one task at a time."""

    def __init__(self, config: WorkerConfig, weights: dict[str, torch.Tensor] | None = None, version: int = 0):
        from agentgym import engines
        from agentgym.rollout.collector import Collector, context_limit, env_factory

        torch.set_num_threads(max(1, config.threads))
        model, tokenizer = config.policy.build()
        if config.engine_fn is not None:
            self.engine = config.engine_fn(model, tokenizer)
        else:
            self.engine = engines.engine_by_name(config.engine, model, tokenizer)
        self.version = -1
        if weights is not None:
            self.load_weights(weights, version)
        else:
            self.version = version
        # As in the trainer: episodes stop short of the engine's context limit; envs that declare ``engine`` get it.
        make_env = env_factory(config.env, config.env_kwargs, tokenizer, self.engine,
                                     context_limit(config.max_context_tokens, self.engine))
        self._make_collector = lambda num_groups: Collector(
            make_env, self.engine, self.params, num_groups=num_groups, group_size=config.group_size,
            num_threads=config.env_threads,
        )
        self.params = config.params
        self._collectors: dict[int, Collector] = {}

    def _collector(self, num_groups: int) -> Any:
        """The collector for tasks of ``num_groups`` groups (a collection has at most two task sizes)."""
        if num_groups not in self._collectors:
            self._collectors[num_groups] = self._make_collector(num_groups)
        collector = self._collectors[num_groups]
        collector.params = self._normalize(collector, self.params)
        return collector

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        """Load the trainer's weights; later tasks are sampled with them."""
        self.engine.load_weights(weights)
        self.version = version
        return version

    def set_params(self, params: Any) -> None:
        """Sample later tasks with ``params``."""
        self.params = params

    @staticmethod
    def _normalize(collector: Any, params: Any) -> Any:
        # As the Collector does: one sample per env, the env's stop tokens when the params name none.
        stops = getattr(collector.venv.envs[0], "stop_token_ids", None)
        if params.stop_token_ids is None and stops:
            params = dataclasses.replace(params, stop_token_ids=sorted(stops))
        return dataclasses.replace(params, n=1)

    def rollout(self, task: RolloutTask) -> RolloutResult:
        t0 = time.perf_counter()
        episodes = self._collector(task.num_groups).collect(task.seed)
        return RolloutResult(task.task_id, episodes, self.version, os.getpid(), time.perf_counter() - t0)

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Slot:
    """A worker position: the current actor in it and how many actors it has had."""

    actor: Any
    generation: int = 0
    inflight: int = 0


class RayCollector:
    """Collects groups of episodes on ``num_workers`` Ray actors (see the module docstring).

    Args:
        config: what each worker builds.
        num_workers: rollout actors.
        num_groups: groups per collection.
        weights: the policy's initial weights, put in the object store once (None: the workers keep the weights
            ``config.policy`` builds).
        cpus_per_worker: Ray CPUs each actor reserves (default: 1, or less when the cluster has fewer free CPUs
            than workers, so that all of them start).
        gpus_per_worker: Ray GPUs each actor reserves.
        groups_per_task: groups a worker rolls out together in one engine batch (default: enough that each worker
            gets about two tasks per collection; 1 gives the finest load balancing and the least lost work when a
            worker dies).
        max_inflight: tasks queued on one worker at a time (2 hides the round trip between tasks).
        max_attempts: a task that lost this many workers is an error (it probably kills them).
        start_timeout_s: the workers must be up within this time (a cluster without room for them is an error,
            not a hang).
        ray_address: the cluster to join when Ray is not initialized yet (default: ``RAY_ADDRESS``, else a new
            cluster of this machine). :meth:`close` shuts Ray down when this collector initialized it.
    """

    def __init__(
        self,
        config: WorkerConfig,
        num_workers: int,
        num_groups: int,
        weights: dict[str, torch.Tensor] | None = None,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float = 0.0,
        groups_per_task: int | None = None,
        max_inflight: int = 2,
        max_attempts: int = 3,
        start_timeout_s: float = 600.0,
        ray_address: str | None = None,
    ):
        import ray

        if num_workers < 1 or num_groups < 1:
            raise ValueError(f"num_workers and num_groups must be >= 1, got {num_workers} and {num_groups}")
        self._owns_ray = False
        self.slots: list[_Slot] = []
        if not ray.is_initialized():
            address = ray_address or os.environ.get("RAY_ADDRESS") or None
            if address is None:  # a new cluster of this machine alone: advertise the loopback address
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
            else:
                ray.init(address=address)
            self._owns_ray = True
        if cpus_per_worker is None:
            # Actors killed just before (a previous collector's close) give their CPUs back asynchronously.
            deadline = time.monotonic() + 5.0
            free = float(ray.available_resources().get("CPU", 0.0))
            while free <= 0.0 and time.monotonic() < deadline:
                time.sleep(0.1)
                free = float(ray.available_resources().get("CPU", 0.0))
            if free <= 0.0:
                raise RuntimeError("the Ray cluster has no free CPU for rollout workers (other actors hold them); "
                                   "free some, add nodes, or pass cpus_per_worker")
            cpus_per_worker = min(1.0, free / num_workers)
        self.config = config
        self.num_groups, self.group_size = num_groups, config.group_size
        self.groups_per_task = max(1, groups_per_task or num_groups // (2 * num_workers))
        self.max_inflight, self.max_attempts = max(1, max_inflight), max(1, max_attempts)
        self._actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(RolloutWorker)
        self.version = 0
        self._weights = ray.put(weights) if weights is not None else None
        self.slots = [_Slot(self._new_actor()) for _ in range(num_workers)]
        try:
            ray.get([s.actor.pid.remote() for s in self.slots], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            message = (f"{num_workers} rollout workers ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU each) did "
                       f"not start within {start_timeout_s:.0f} s; the cluster has {ray.available_resources()} free. "
                       "Lower rollout_workers or cpus_per_worker, or add nodes")
            self.close()
            raise RuntimeError(message) from None
        self._collections = 0
        self._next_episode = 0
        self.restarts = 0
        """workers replaced over the collector's lifetime"""
        self.last_stats: dict[str, float] = {}
        """counts of the latest collection (merged into the trainer's metrics)"""

    def _new_actor(self) -> Any:
        if self._weights is None:
            return self._actor_cls.remote(self.config, None, self.version)
        return self._actor_cls.remote(self.config, self._weights, self.version)

    @property
    def workers(self) -> list[Any]:
        """The current actor handles, one per worker position."""
        return [s.actor for s in self.slots]

    def worker_pids(self) -> list[int]:
        """The process id of each current worker (waits for them to start)."""
        import ray

        return ray.get([s.actor.pid.remote() for s in self.slots])

    @property
    def params(self) -> Any:
        """The sampling parameters of the workers' engines."""
        return self.config.params

    @params.setter
    def params(self, params: Any) -> None:
        # Later tasks of every worker (and of replacements, built from the config) sample with these.
        self.config = dataclasses.replace(self.config, params=params)
        for slot in self.slots:
            slot.actor.set_params.remote(params)

    # -- weights ----------------------------------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Put ``state_dict`` in the object store once; every worker loads it before its next task."""
        import ray

        self.version += 1
        self._weights = ray.put({k: v.detach() for k, v in state_dict.items()})
        for slot in self.slots:
            slot.actor.load_weights.remote(self._weights, self.version)

    def release(self, cache_key: str) -> None:
        """Engine interface: workers release their own cache keys."""

    # -- collecting -------------------------------------------------------------------------------------------------
    def tasks(self, seed: int) -> list[RolloutTask]:
        """The tasks of one collection: group ``g`` is reset with seed ``seed + g``."""
        c, k = self._collections, self.groups_per_task
        self._collections += 1
        return [RolloutTask(f"{c}-{g}", g, seed + g, min(k, self.num_groups - g)) for g in range(0, self.num_groups, k)]

    def stream(self, seed: int, on_result: Callable[[RayCollector, RolloutResult], None] | None = None
               ) -> Iterator[tuple[RolloutTask, list[Episode]]]:
        """Yield each task of one collection with its episodes as soon as its worker returns it (completion order).

        ``on_result(collector, result)`` is called for every accepted result before it is yielded (for progress
        display and for tests that inject faults).
        """
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        lost_errors: tuple[type[BaseException], ...] = (RayActorError,)
        for name in ("ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "ObjectLostError",
                     "OwnerDiedError", "NodeDiedError"):
            err = getattr(ray.exceptions, name, None)
            if err is not None:
                lost_errors += (err,)

        tasks = self.tasks(seed)
        queue = collections.deque(tasks)
        pending: dict[Any, tuple[RolloutTask, int, int]] = {}  # ref -> (task, slot index, actor generation)
        attempts = collections.Counter()
        last_error = "?"
        done: set[str] = set()
        stats = collections.Counter()
        for slot in self.slots:
            slot.inflight = 0  # tasks of an abandoned stream may still run; they only delay the new ones
        while len(done) < len(tasks):
            for i, slot in enumerate(self.slots):
                while queue and slot.inflight < self.max_inflight:
                    task = queue.popleft()
                    if task.task_id in done:
                        continue
                    pending[slot.actor.rollout.remote(task)] = (task, i, slot.generation)
                    slot.inflight += 1
            if not pending:
                raise RuntimeError("no task in flight and tasks left: the collector lost track of them")
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                if ref not in pending:
                    continue  # dropped when its worker was replaced
                task, i, generation = pending.pop(ref)
                slot = self.slots[i]
                try:
                    result: RolloutResult | None = ray.get(ref)
                except lost_errors as e:  # the worker process (or its node) is gone
                    result, last_error = None, f"{type(e).__name__}: {e}"
                except RayTaskError as e:  # the env or the engine raised: a bug, not bad luck
                    raise RuntimeError(f"rollout task {task.task_id} (seed {task.seed}) failed in its worker; "
                                       f"fix the error below (it is not retried):\n{e}") from e
                if result is None:
                    lost = [task]
                    if generation == slot.generation:  # the first sign of this actor's death: replace it
                        lost += self._replace(i, pending)
                        stats["restarts"] += 1
                    for t in lost:
                        if t.task_id in done:
                            continue
                        attempts[t.task_id] += 1
                        if attempts[t.task_id] >= self.max_attempts:
                            raise RuntimeError(
                                f"rollout task {t.task_id} lost {attempts[t.task_id]} workers; it probably kills "
                                f"them (out of memory?). Last error: {last_error[:2000]}")
                        queue.appendleft(t)
                        stats["requeued_tasks"] += 1
                    continue
                slot.inflight -= 1
                if result.task_id in done:
                    stats["duplicate_results"] += 1
                    continue
                if result.weights_version != self.version:
                    raise RuntimeError(f"task {task.task_id} was sampled with weights version "
                                       f"{result.weights_version}, expected {self.version}: a worker failed to "
                                       "load the new weights")
                done.add(result.task_id)
                episodes = self._tag(task, result)
                if on_result is not None:
                    on_result(self, result)
                yield task, episodes
        self.last_stats = {
            "rollout_workers": float(len(self.slots)),
            "rollout_requeued_tasks": float(stats["requeued_tasks"]),
            "rollout_worker_restarts": float(stats["restarts"]),
            "rollout_duplicate_results": float(stats["duplicate_results"]),
            "rollout_weights_version": float(self.version),
        }

    def collect(self, seed: int, on_result: Callable[[RayCollector, RolloutResult], None] | None = None
                ) -> list[Episode]:
        """All groups of one collection, in task order (as the in-process collector returns them)."""
        base = self._next_episode
        self._next_episode += self.num_groups * self.group_size
        groups: dict[int, list[Episode]] = {}
        for task, episodes in self.stream(seed, on_result):
            for j, ep in enumerate(episodes):
                ep.episode_id = base + task.index * self.group_size + j
            groups[task.index] = episodes
        return [ep for g in sorted(groups) for ep in groups[g]]

    def _tag(self, task: RolloutTask, result: RolloutResult) -> list[Episode]:
        for ep in result.episodes:
            ep.info = {**ep.info, "rollout_task": task.task_id, "rollout_worker_pid": result.worker_pid,
                       "weights_version": result.weights_version}
        return result.episodes

    def _replace(self, i: int, pending: dict[Any, tuple[RolloutTask, int, int]]) -> list[RolloutTask]:
        """Put a new actor in slot ``i`` (its actor died); return the tasks that were still assigned to the old one."""
        import ray

        slot = self.slots[i]
        orphans = []
        for ref, (task, j, generation) in list(pending.items()):
            if j == i and generation == slot.generation:
                del pending[ref]
                orphans.append(task)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone
            pass
        self.slots[i] = _Slot(self._new_actor(), slot.generation + 1)
        self.restarts += 1
        return orphans

    def close(self) -> None:
        """Stop the workers (and the Ray cluster, when this collector started it)."""
        import ray

        if not ray.is_initialized():
            return
        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.slots = []
        if self._owns_ray:
            ray.shutdown()

