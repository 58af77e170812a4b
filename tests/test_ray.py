"""Rollouts on a local Ray cluster (2 CPUs): streaming, weight broadcast, and a worker killed mid-collection."""

import dataclasses
import functools
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ray")

import ray  # noqa: E402

from agentgym.models import policy_spec  # noqa: E402
from agentgym.engines import SamplingParams  # noqa: E402
from agentgym.training.policy import forward  # noqa: E402
from agentgym.rollout.ray_workers import RayCollector, WorkerConfig  # noqa: E402
from agentgym.tiny import make_tiny_policy  # noqa: E402

ENV = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}


@pytest.mark.slow
def test_cli_trains_with_ray_workers_and_two_trainer_processes(tmp_path):
    """`agentgym train --rollout_workers 2 --trainer_procs 2` runs end to end (its own Ray cluster, shut down)."""
    cmd = [sys.executable, "-m", "agentgym.workflow.cli", "train", "--model", "tiny", "--env", "agentgym/GuessNumber-v0",
           "--env.low", "1", "--env.high", "3", "--env.max_turns", "2", "--env.system_prompt", "null",
           "--algo", "grpo", "--iterations", "2", "--groups_per_iteration", "2", "--group_size", "2",
           "--max_new_tokens", "2", "--rollout-workers", "2", "--trainer-procs", "2", "--wandb", "false",
           "--progress", "false", "--export", "false", "--run_dir", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^done in \d+:\d\d: 2 iterations", out.stdout, re.M), out.stdout
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"rollout_workers": 2.0' in metrics[-1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def worker_config(group_size=2, max_new_tokens=3):
    model, tok = make_tiny_policy(seed=0)
    return WorkerConfig(env="agentgym/GuessNumber-v0", policy=policy_spec(model, tok), env_kwargs=ENV,
                        params=SamplingParams(max_new_tokens=max_new_tokens), group_size=group_size), model


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def actions(episodes):
    return [(ep.group_id, [tuple(t.action_ids) for t in ep.turns]) for ep in episodes]


def kill_other_worker(pids, killed, collector, result):
    """At the first result, SIGKILL the other worker: it still has a task in flight (each holds two)."""
    if killed:
        return
    victim = next(pid for pid in pids if pid != result.worker_pid)
    os.kill(victim, signal.SIGKILL)
    killed.append(victim)


@pytest.fixture(scope="class")
def collector(cluster):
    """Two workers shared by the tests below (starting a worker is the slow part); each test starts from the
    initial weights."""
    config, model = worker_config()
    rc = RayCollector(config, num_workers=2, num_groups=6, weights=state(model), max_inflight=2)
    rc.initial_model = model
    yield rc
    rc.close()


class TestSharedWorkers:
    """Two workers shared by these tests (starting workers is the slow part); released before the next tests."""

    def test_collect_streams_every_group_once(self, collector):
        rc = collector
        rc.load_weights(state(rc.initial_model))
        streamed = list(rc.stream(seed=100))
        assert sorted(task.index for task, _ in streamed) == [0, 1, 2, 3, 4, 5]
        assert len({task.task_id for task, _ in streamed}) == 6
        episodes = rc.collect(seed=100)
        assert [ep.group_id for ep in episodes] == [100 + g for g in range(6) for _ in range(2)]
        first = episodes[0].episode_id
        assert [ep.episode_id for ep in episodes] == list(range(first, first + 12))
        # A task samples the same episodes whichever worker runs it (so a requeued task replaces a lost one).
        by_index = {task.index: eps for task, eps in streamed}
        assert actions(episodes) == actions([ep for g in range(6) for ep in by_index[g]])
        assert len({ep.info["rollout_worker_pid"] for ep in episodes}) == 2, "both workers took tasks"
        assert len({ep.info["rollout_task"] for ep in episodes}) == 6
        assert max(len(ep.turns) for ep in episodes) <= 2  # the workers' envs take ENV's max_turns
        again = rc.collect(seed=100)
        assert [ep.episode_id for ep in again] == list(range(first + 12, first + 24))
        # Several groups per task: a worker batches them in one engine; the groups are the same tasks of the env.
        assert rc.groups_per_task == 1
        rc.groups_per_task = 4
        try:
            streamed = sorted(rc.stream(seed=100), key=lambda item: item[0].index)
        finally:
            rc.groups_per_task = 1
        assert [(task.index, task.num_groups) for task, _ in streamed] == [(0, 4), (4, 2)]
        assert [ep.group_id for _, eps in streamed for ep in eps] == [100 + g for g in range(6) for _ in range(2)]


    def test_new_weights_reach_every_worker(self, collector):
        rc, model = collector, collector.initial_model
        rc.load_weights(state(model))
        before = rc.collect(seed=7)
        assert {ep.info["weights_version"] for ep in before} == {rc.version}
        new_model, _ = make_tiny_policy(seed=1)
        rc.load_weights(state(new_model))
        after = rc.collect(seed=7)
        assert {ep.info["weights_version"] for ep in after} == {rc.version}
        assert actions(after) != actions(before)
        # The sampled tokens' logprobs are the new policy's, as the trainer computes them.
        for ep in after:
            turn = ep.turns[0]
            ids = torch.tensor([turn.prompt_ids + turn.action_ids])
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, len(turn.prompt_ids):] = True
            with torch.no_grad():
                new = forward(new_model, ids, torch.ones_like(mask), mask).logprobs[mask]
                old = forward(model, ids, torch.ones_like(mask), mask).logprobs[mask]
            assert torch.allclose(new, torch.tensor(turn.logprobs), atol=1e-4)
            assert not torch.allclose(old, torch.tensor(turn.logprobs), atol=1e-4)


    def test_sampling_params_reach_every_worker(self, collector):
        rc = collector
        rc.load_weights(state(rc.initial_model))
        saved = rc.params
        rc.params = dataclasses.replace(saved, temperature=0.0)
        try:
            greedy = rc.collect(seed=9)
        finally:
            rc.params = saved
        # Greedy: the two episodes of a group (same task) say the same thing.
        for a, b in zip(greedy[::2], greedy[1::2]):
            assert actions([a]) == actions([b])
        sampled = rc.collect(seed=9)
        assert any(actions([a]) != actions([b]) for a, b in zip(sampled[::2], sampled[1::2]))


    def test_an_error_in_a_task_is_reported_not_retried(self, collector):
        rc = collector
        rc.load_weights(state(rc.initial_model))
        restarts = rc.restarts
        with pytest.raises(RuntimeError, match="not retried"):
            rc.collect(seed=-100)  # a negative reset seed: the env raises inside the worker
        assert rc.restarts == restarts, "a task that raises is a bug to report, not a dead worker to replace"
        assert len(rc.collect(seed=3)) == 12


    def test_killed_worker_is_replaced_and_no_episode_is_lost_or_counted_twice(self, collector):
        rc = collector
        rc.load_weights(state(rc.initial_model))
        reference = rc.collect(seed=50)
        assert rc.last_stats["rollout_worker_restarts"] == 0
        killed = []
        episodes = rc.collect(seed=50, on_result=functools.partial(kill_other_worker, rc.worker_pids(), killed))
        assert len(killed) == 1
        assert rc.last_stats["rollout_worker_restarts"] == 1
        assert rc.last_stats["rollout_requeued_tasks"] >= 1
        assert rc.last_stats["rollout_duplicate_results"] == 0
        # Every group exactly once, with the episodes the undisturbed collection produced.
        assert len(episodes) == 12
        assert actions(episodes) == actions(reference)
        assert len({ep.episode_id for ep in episodes + reference}) == 24
        pids = rc.worker_pids()
        assert killed[0] not in pids and len(set(pids)) == 2
        # The replacement has the current weights: the next collection passes the weights-version check.
        assert len(rc.collect(seed=51)) == 12

    def test_a_cluster_without_room_is_an_error_not_a_hang(self, collector):
        config, _ = worker_config()
        with pytest.raises(RuntimeError, match="no free CPU"):
            RayCollector(config, num_workers=2, num_groups=2)  # the shared workers hold both CPUs
        with pytest.raises(RuntimeError, match="did not start within"):
            RayCollector(config, num_workers=1, num_groups=2, cpus_per_worker=1.0, start_timeout_s=2)


@pytest.mark.slow
def test_training_with_ray_workers_and_two_trainer_processes_survives_a_kill(cluster, tmp_path):
    from agentgym.training.trainer import Trainer
    from agentgym.training.train_config import TrainConfig

    model, tok = make_tiny_policy(seed=0)
    cfg = TrainConfig(env="agentgym/GuessNumber-v0", env_kwargs=ENV, algo="grpo", algo_kwargs={"entropy_coef": 0.01},
                      iterations=3, groups_per_iteration=4, group_size=2, max_new_tokens=2, lr=1e-2,
                      micro_batch_size=4, rollout_workers=2, trainer_procs=2, wandb=False, progress=False,
                      export=False, run_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg, model, tok)
    try:
        assert isinstance(trainer.collector, RayCollector) and trainer.parallel.world_size == 2
        initial = next(trainer.model.parameters()).detach().clone()
        collect = trainer.collector.collect
        killed = []

        def collect_with_a_kill(seed):
            if trainer.iteration == 1:
                pids = trainer.collector.worker_pids()
                return collect(seed, on_result=functools.partial(kill_other_worker, pids, killed))
            return collect(seed)

        trainer.collector.collect = collect_with_a_kill
        history = trainer.train()
    finally:
        trainer.close()
    assert len(killed) == 1
    assert [h["episodes"] for h in history] == [8.0, 8.0, 8.0]
    assert [h["rollout_worker_restarts"] for h in history] == [0.0, 1.0, 0.0]
    assert history[1]["rollout_requeued_tasks"] >= 1
    # The weights were broadcast after each update, and every episode was sampled with the latest.
    assert [h["rollout_weights_version"] for h in history] == [0.0, 1.0, 2.0]
    assert not torch.equal(initial, next(trainer.model.parameters()).detach())
