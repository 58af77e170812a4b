"""The engine behind the server: one thread owns it, and waiting requests with equal sampling parameters share a
``generate`` call (requests with a ``seed`` run alone, so a seed reproduces its completion)."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from dataclasses import dataclass, field

from agentgym.engines.base import Engine, SamplingParams


@dataclass
class _Job:
    prompt: list[int]
    params: SamplingParams
    cache_key: str | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class EngineWorker:
    """One thread that owns the engine; waiting requests with equal sampling parameters share a batch."""

    def __init__(self, engine: Engine, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="agentgym-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, cache_key: str | None) -> concurrent.futures.Future:
        job = _Job(prompt, params, cache_key)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            pending = [job]
            while len(pending) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                pending.append(nxt)
            for batch in _batches(pending):
                self._execute(batch)

    def _execute(self, batch: list[_Job]) -> None:
        keys = [j.cache_key for j in batch]
        try:
            results = self.engine.generate(
                [j.prompt for j in batch], batch[0].params, cache_keys=keys if any(keys) else None
            )
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear about the failure
            for j in batch:
                j.future.set_exception(exc)
            return
        for j, r in zip(batch, results):
            j.future.set_result(r)


def _batches(jobs: list[_Job]) -> list[list[_Job]]:
    """Group jobs that can share one ``generate`` call: equal parameters, no seed, distinct (or no) cache keys."""
    groups: list[list[_Job]] = []
    for job in jobs:
        for group in groups:
            if (
                job.params.seed is None
                and group[0].params == job.params
                and (job.cache_key is None) == (group[0].cache_key is None)
                and (job.cache_key is None or all(j.cache_key != job.cache_key for j in group))
            ):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups
