"""The training loop: collect -> batch -> advantages -> K epochs of clipped updates -> push weights -> log.

Each part lives in its own module; this one only orders them:
:mod:`agentgym.rollout.collector` (rollouts), :mod:`agentgym.rollout.batch` (the TensorDict), :mod:`agentgym.algos`
(advantages and losses, pure functions), :mod:`agentgym.training.policy` (the trainer's logprobs), :mod:`agentgym.training.tracking`
(metrics) and :mod:`agentgym.training.checkpoint` (resume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from agentgym import algos
from agentgym.training import build, distributed
from agentgym.training.allocator import keep_freed_memory, return_freed_memory
from agentgym.rollout.batch import Episode, episode_record, length_buckets, scalar_info, to_batch, trim
from agentgym.training.checkpoint import load_checkpoint, save_checkpoint
from agentgym.training.policy import activation_bytes_per_token, forward, set_activation_checkpointing
from agentgym.training.tracking import RunLogger, clock, combine_metrics, replace_text
from agentgym.training.train_config import TrainConfig


EVAL_FILE = "eval.json"
"""In the run directory: the held-out evaluations before and after training."""


def _default_run_dir(cfg: TrainConfig) -> str:
    name = cfg.env.split("/")[-1]
    return str(Path("runs") / f"{name}-{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}")


class Trainer:
    """Trains a policy on a registered env with a named algorithm.

    Args:
        cfg: the run config.
        model, tokenizer: a policy to train instead of loading ``cfg.model`` (tests pass tiny ones).
        engine: the inference engine; by default the one ``cfg.engine`` names (:func:`agentgym.training.build.engine`): a
            :class:`~agentgym.engines.TransformersEngine` sharing the trained module, so pushing weights costs
            nothing on one machine, or a :class:`~agentgym.engines.VLLMEngine`.
        collector: anything with ``collect(seed) -> list[Episode]`` (e.g. a
            :class:`~agentgym.rollout.multi_agent.MultiAgentCollector` whose trainable policy is ``self.engine``), built
            from the trainer's engine by a callable ``collector(trainer)``; by default a
            :class:`~agentgym.rollout.collector.Collector` over ``cfg.env``.
    """

    def __init__(
        self, cfg: TrainConfig, model: Any = None, tokenizer: Any = None, engine: Any = None, collector: Any = None
    ):
        self.cfg = cfg
        self.algo = cfg.algo_config()
        if cfg.activation_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"activation_checkpointing must be auto, on or off, got {cfg.activation_checkpointing!r}")
        keep_freed_memory()  # a step reuses the last step's memory instead of faulting it in again
        torch.manual_seed(cfg.seed)
        self.model, self.tokenizer = build.policy(cfg, model, tokenizer)
        self.value_head = build.value_head(self.algo, self.model)
        self.ref_model = build.reference(cfg, self.algo, self.model)
        self.optimizer = build.optimizer(cfg, self.model, self.value_head)
        self._act_bytes = activation_bytes_per_token(self.model)
        budget = cfg.activation_memory_mb * 2**20
        self._micro_tokens = int(budget // self._act_bytes) if budget and self._act_bytes else 0
        self._checkpointing_on = False  # whether the decoder blocks recompute their activations now
        self._max_micro_tokens = 0  # the largest micro-batch so far, padded (benchmarks/trainer_profile.py reads it)
        self._failed_in_a_row = 0  # iterations in a row in which every episode failed
        self.engine = engine if engine is not None else build.engine(cfg, self.model, self.tokenizer)
        self.params = build.sampling_params(cfg)
        self._max_context = build.context_limit(cfg.max_context_tokens, self.engine)
        # Held-out evaluation plays cfg.env itself: only when the episodes come from cfg.env as the trainer builds it.
        self._own_collector = collector is None
        if collector is not None:
            self.collector = collector(self)
        else:
            self.collector = build.collector(cfg, self.algo, self.engine, self.params, self.tokenizer,
                                             self._max_context, model=self.model, weights=self._policy_state_dict)
        self.algo = build.episode_tokens(cfg, self.algo, None if self._own_collector else self.collector)
        self.iteration = 0
        self.run_dir = Path(cfg.run_dir or _default_run_dir(cfg))
        self.report: dict[str, Any] = {}  # what train() measured and wrote (see train)
        if cfg.resume:
            state = load_checkpoint(cfg.resume, self._modules(), self.optimizer)
            self.iteration = int(state["step"])
            self.engine_weights_changed()
        self.parallel: distributed.DataParallel | None = None
        if distributed.wanted(cfg):
            state = None if distributed.launched() else {
                k: v.detach().clone() for k, v in self._policy_state_dict().items()}
            self.parallel = distributed.setup(
                self.model, self.value_head, world_size=cfg.trainer_procs, tokenizer=self.tokenizer,
                state_dict=state, entry=_follow_rank_zero, entry_args=(cfg,))

    # -- parts of an iteration --------------------------------------------------------------------------------
    def _modules(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"model": self.model}
        if self.value_head is not None:
            mods["value_head"] = self.value_head
        return mods

    def engine_weights_changed(self) -> None:
        """Tell the engine the weights changed (stale KV caches go); an external engine gets the state dict."""
        if getattr(self.engine, "model", None) is self.model:
            self.engine.clear_cache()  # the engine samples from this very module: only its KV caches are stale
        else:
            self.engine.load_weights(self._policy_state_dict())
        push = getattr(self.collector, "load_weights", None)  # a collector with engines of its own (Ray workers)
        if push is not None:
            push(self._policy_state_dict())

    def engine_for(self, adapter: str) -> Any:
        """The engine that samples with LoRA adapter ``adapter`` (``cfg.lora_adapters``), for a policy map."""
        from agentgym.training.adapters import AdapterEngine

        if adapter not in self.cfg.lora_adapters:
            raise KeyError(f"no adapter {adapter!r}; cfg.lora_adapters = {self.cfg.lora_adapters}")
        return AdapterEngine(self.engine, self.model, adapter)

    def _micro_batches(self, batch: TensorDict) -> list[tuple[str | None, torch.Tensor]]:
        """``(adapter, row index)`` pairs covering ``batch``'s rows: up to ``micro_batch_size`` rows of similar
        length each (whole episodes: an episode's rows stay together), and with ``cfg.lora_adapters`` the rows of
        one adapter each, in adapter order."""
        names: list[str | None] = [None]
        subsets = [torch.arange(batch.batch_size[0])]
        if self.cfg.lora_adapters:
            names = list(self.cfg.lora_adapters)
            subsets = [torch.nonzero(batch["adapter_id"] == a).flatten() for a in range(len(names))]
        out = []
        for name, rows in zip(names, subsets):
            if self.parallel is not None:
                # DDP: every process must run as many backward passes: fixed chunks of rows (the shards have the
                # same row count; their first rows are the padding, so no chunk of 2 or more is padding alone).
                parts = list(torch.arange(rows.numel()).split(self.cfg.micro_batch_size))
            else:
                parts = length_buckets(batch[rows], self.cfg.micro_batch_size, self._micro_tokens)
            out += [(name, rows[idx]) for idx in parts]
        return out

    def _use(self, adapter: str | None) -> None:
        if adapter is not None:
            from agentgym.training.adapters import use_adapter

            use_adapter(self.model, adapter)

    def _checkpointing(self, micro: TensorDict) -> None:
        """Turn activation checkpointing on or off for this micro-batch (``cfg.activation_checkpointing``)."""
        mode = self.cfg.activation_checkpointing
        tokens = int(micro["attention_mask"].numel())  # padded: the forward computes every column
        self._max_micro_tokens = max(self._max_micro_tokens, tokens)
        on = mode == "on" or (mode == "auto" and self._micro_tokens > 0 and tokens > self._micro_tokens)
        if on != self._checkpointing_on:
            supported = set_activation_checkpointing(self.model, on)
            self._checkpointing_on = on and supported

    def _forward(self, policy: Any, micro: TensorDict, **kwargs: Any) -> Any:
        cfg = self.cfg
        return forward(policy, micro["input_ids"], micro["attention_mask"], micro["loss_mask"], cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, **kwargs)

    def _adapter_ids(self, episodes: list[Episode], batch: TensorDict) -> torch.Tensor:
        """Each row's adapter: the index in ``cfg.lora_adapters`` of its episode's ``info["policy"]``."""
        index = {name: i for i, name in enumerate(self.cfg.lora_adapters)}
        of: dict[tuple[int, int], int] = {}
        for ep in episodes:
            name = ep.info.get("policy")
            if name not in index:
                raise KeyError(f"an episode of policy {name!r} reached the trainer, but only the adapters "
                               f"{self.cfg.lora_adapters} train: make the other policies non-trainable")
            of[(ep.episode_id, ep.agent_id)] = index[name]
        return torch.tensor([of[(int(e), int(a))] for e, a in zip(batch["episode_id"], batch["agent_id"])],
                            dtype=torch.long)

    def _policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's weights under the base model's names (LoRA adapters merged into a copy)."""
        if self.cfg.lora_adapters:
            raise RuntimeError("several LoRA adapters cannot be pushed as one set of weights; they train with the "
                               "in-process engine that shares the module (Trainer.engine_for)")
        if self.cfg.lora_rank == 0:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        self.model.merge_adapter()
        try:
            state = self.model.get_base_model().state_dict()
            return {
                k.replace(".base_layer.", "."): v.detach().clone()
                for k, v in state.items()
                if "lora_" not in k
            }
        finally:
            self.model.unmerge_adapter()

    def collect(self, round_: int = 0) -> list[Episode]:
        """One collection of ``groups_per_iteration`` tasks; ``round_`` > 0 draws other tasks (dynamic sampling)."""
        seed = self.cfg.seed * 1_000_003 + self.iteration * self.cfg.groups_per_iteration + round_ * 2**32
        if self.parallel is not None:  # rank 0 rolls out; every trainer process gets the same episodes
            return self.parallel.broadcast(self.collector.collect(seed) if self.parallel.is_main else None)
        return self.collector.collect(seed)

    @torch.no_grad()
    def _score(self, batch: TensorDict) -> TensorDict:
        """Fill what the algorithm needs before the update: old values, reference logprobs."""
        need_old = self.algo.needs_trainer_logprobs
        need_values = self.value_head is not None
        if not (need_old or need_values or self.algo.needs_ref_logprobs):
            return batch
        shape = batch["loss_mask"].shape
        olds, values, refs = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        bootstrap = torch.zeros(shape[0])
        for adapter, idx in self._micro_batches(batch):
            self._use(adapter)
            micro = trim(batch[idx])
            width = micro["loss_mask"].shape[1]
            if need_values or need_old:
                out = self._forward(self.model, micro, value_head=self.value_head)
                olds[idx, :width] = out.logprobs
                if need_values:
                    values[idx, :width] = out.values
                    bootstrap[idx] = out.bootstrap_values
            if self.algo.needs_ref_logprobs:
                refs[idx, :width] = self._ref_logprobs(micro)
        if need_values:
            batch["values"], batch["bootstrap_values"] = values, bootstrap
        if need_old:
            batch["trainer_old_logprobs"] = olds
        if self.algo.needs_ref_logprobs:
            batch["ref_logprobs"] = refs
        return batch

    def _ref_logprobs(self, micro: TensorDict) -> torch.Tensor:
        if self.ref_model is not None:
            return self._forward(self.ref_model, micro).logprobs
        with self.model.disable_adapter():  # LoRA: the reference is the base model
            return self._forward(self.model, micro).logprobs

    def update(self, batch: TensorDict) -> dict[str, float]:
        """K epochs of minibatch updates on one batch; returns the minibatches' metrics, averaged.

        A minibatch is a set of whole episodes. A minibatch with no learning signal (`algos.has_learning_signal`)
        takes no optimizer step, and neither does a parameter group whose gradient is exactly zero: AdamW would
        still move the weights by its leftover momentum. ``skipped_steps`` counts the minibatches whose policy was
        not stepped. Before the first step the trainer's logprobs of every row are compared with the engine's
        (``engine_trainer_logprob_diff_max``, ``engine_trainer_ratio_mean``).
        """
        cfg, algo = self.cfg, self.algo
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + self.iteration)
        episodes = algos.EpisodeIndex.from_batch(batch, algo.group_by_agent)
        per_step: list[dict[str, float]] = []
        skipped, trained_tokens = 0, 0.0
        step0 = _StepZero()
        for _ in range(cfg.epochs):
            order = torch.randperm(episodes.num_episodes, generator=gen)
            for chosen in order.chunk(max(1, min(cfg.minibatches, episodes.num_episodes))):
                mini = algos.sequence_keys(batch[_rows_of(episodes, chosen)], algo)
                if not algos.has_learning_signal(mini, algo):
                    skipped += 1
                    if not step0.done:  # the engine/trainer check still runs, on a forward pass alone
                        with torch.no_grad():
                            for adapter, idx in self._micro_batches(mini):
                                self._use(adapter)
                                micro = trim(mini[idx])
                                step0.add(self._forward(self.model, micro).logprobs, micro)
                    step0.done = True
                    continue
                norm = algos.loss_normalizer(mini, algo)
                policy, scale = self.model, 1.0
                if self.parallel is not None:  # this process's episodes, the whole minibatch's counts
                    mini, _ = self.parallel.shard(mini, algo)
                    policy, scale = self.parallel.module, self.parallel.loss_scale
                self.optimizer.zero_grad(set_to_none=True)
                metrics = _MinibatchMetrics()
                t_fb = time.perf_counter()
                for adapter, idx in self._micro_batches(mini):
                    self._use(adapter)
                    micro = trim(mini[idx])
                    self._checkpointing(micro)
                    out = self._forward(policy, micro, value_head=self.value_head, with_entropy=True)
                    loss, m = algos.actor_loss(out.logprobs, micro, algo, norm, entropy=out.entropy)
                    if self.value_head is not None:
                        vloss, vm = algos.critic_loss(out.values, micro, algo, norm)
                        loss = loss + vloss
                        m = {**m, **vm}
                    (loss * scale).backward()
                    metrics.add(m, float(micro["loss_mask"].sum()))
                    trained_tokens += float(micro["attention_mask"].sum())
                    if not step0.done:
                        step0.add(out.logprobs.detach(), micro)
                step0.done = True
                step_metrics = metrics.result()
                t_opt = time.perf_counter()
                step_metrics["forward_backward_s"] = t_opt - t_fb
                gnorm, stepping = _clip_and_drop_zero_gradients(self.optimizer, cfg.max_grad_norm,
                                                                algo.skip_without_signal)
                if cfg.max_grad_norm > 0:
                    step_metrics["grad_norm"] = gnorm
                if not stepping[0]:
                    skipped += 1
                self.optimizer.step()
                step_metrics["optimizer_s"] = time.perf_counter() - t_opt
                per_step.append(step_metrics)
        self.optimizer.zero_grad(set_to_none=True)
        out_metrics = combine_metrics(per_step)
        for key in ("forward_backward_s", "optimizer_s"):  # totals over the steps, not means
            out_metrics[key] = sum(m[key] for m in per_step)
        out_metrics.update(step0.result())
        out_metrics["skipped_steps"] = float(skipped)
        out_metrics["trained_tokens"] = trained_tokens
        return out_metrics if self.parallel is None else self.parallel.reduce_metrics(out_metrics)

    def _collect_batch(self) -> tuple[list[Episode], dict[str, float]]:
        """This iteration's episodes. With DAPO dynamic sampling, more tasks are drawn (up to
        ``algo.max_sampling_rounds`` collections) until ``groups_per_iteration`` groups have returns that differ;
        the first that many such groups are kept, and the rest of the batch is dropped."""
        episodes = self.collect()
        if not self.algo.dynamic_sampling:
            return episodes, {}
        target = self.cfg.groups_per_iteration
        key = (lambda ep: (ep.group_id, ep.agent_id)) if self.algo.group_by_agent else (lambda ep: ep.group_id)
        kept = algos.informative_groups([(key(ep), ep.total_reward) for ep in episodes])
        rounds = 1
        while len(kept) < target and rounds < self.algo.max_sampling_rounds:
            more = self.collect(round_=rounds)
            episodes += more
            kept = algos.informative_groups([(key(ep), ep.total_reward) for ep in episodes])
            rounds += 1
        chosen = set(kept[:target])
        batch_eps = [ep for ep in episodes if key(ep) in chosen] or episodes
        return batch_eps, {"sampling_rounds": float(rounds), "sampled_episodes": float(len(episodes))}

    def step(self) -> dict[str, float]:
        """One iteration: collect, build the batch, advantages, update, push weights. Returns its metrics."""
        t0 = time.perf_counter()
        episodes, sampling = self._collect_batch()
        t_rollout = time.perf_counter() - t0
        self._save_episodes(episodes)
        if not episodes:
            return self._failed_iteration(t0)
        self._failed_in_a_row = 0
        release = getattr(self.engine, "release_memory", None)
        if release is not None:  # sampling's packed weights and kept contexts are not needed while training
            release()
        t_batch = time.perf_counter()
        batch, agg = to_batch(episodes, pad_id=self.tokenizer.pad_token_id or 0)
        if self.cfg.lora_adapters and batch.batch_size[0]:
            batch["adapter_id"] = self._adapter_ids(episodes, batch)
            batch = batch[torch.argsort(batch["adapter_id"], stable=True)]
        metrics = episode_metrics(episodes)
        metrics.update(agg)
        metrics.update(sampling)
        metrics.update(getattr(self.collector, "last_stats", {}))
        # Every token the engines sampled (a multi-agent collector's frozen seats too), else the batch's.
        sampled = metrics.get("sampled_tokens", metrics["policy_tokens"])
        metrics["rollout_tokens_per_s"] = sampled / max(t_rollout, 1e-9)
        if self.algo.dynamic_sampling:
            batch, dropped = algos.filter_groups(batch, self.algo)
            metrics["dropped_groups"] = float(dropped)
        t1 = time.perf_counter()
        metrics["batch_s"] = t1 - t_batch
        if batch.batch_size[0] > 0 and bool(batch["loss_mask"].any()):
            batch = self._score(batch)
            t_score = time.perf_counter()
            metrics["score_s"] = t_score - t1
            batch = algos.shape_rewards(batch, self.algo)
            batch = algos.compute_advantages(batch, self.algo)
            t_update = time.perf_counter()
            metrics.update(self.update(batch))
            return_freed_memory()  # activations and gradients are not needed while sampling
            metrics["update_s"] = time.perf_counter() - t_update
            t_push = time.perf_counter()
            self.engine_weights_changed()
            metrics["push_s"] = time.perf_counter() - t_push
        t_train = time.perf_counter() - t1
        # Tokens that went through forward+backward (minibatches skipped for lack of signal do not count).
        trained_tokens = metrics.setdefault("trained_tokens", 0.0)
        metrics["batch_tokens"] = float(batch["attention_mask"].sum()) if batch.batch_size[0] else 0.0
        if trained_tokens:
            metrics["train_tokens_per_s"] = trained_tokens / max(t_train, 1e-9)
        metrics["rollout_s"], metrics["train_s"] = t_rollout, t_train
        metrics["iteration_s"] = time.perf_counter() - t0
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.iteration += 1
        return metrics

    def _failed_iteration(self, t0: float) -> dict[str, float]:
        """An iteration in which no episode reached the policy: record why, go on or stop (max_failed_iterations)."""
        failed = list(getattr(self.collector, "last_unplayed", []) or [])
        errors = [str(f.get("error")) for f in failed if f.get("error")]
        self._failed_in_a_row += 1
        if self.cfg.save_episodes > 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with (self.run_dir / "episodes.jsonl").open("a") as f:
                for rec in failed[: self.cfg.save_episodes]:
                    f.write(json.dumps({"iteration": self.iteration + 1, "failed": True, **scalar_info(rec)}) + "\n")
        summary = (f"iteration {self.iteration + 1}: all {len(failed)} episodes failed before the policy's first "
                   f"turn, so there is nothing to train on")
        if errors:
            first = list(dict.fromkeys(errors))[:3]
            summary += "; first errors: " + " | ".join(e if len(e) < 300 else e[:300] + "..." for e in first)
        limit = self.cfg.max_failed_iterations
        if limit and self._failed_in_a_row >= limit:
            raise RuntimeError(f"{summary}. Stopped after {self._failed_in_a_row} such iterations in a row "
                               "(max_failed_iterations).")
        import warnings

        warnings.warn(summary, stacklevel=2)
        self.iteration += 1
        return {"episodes": 0.0, "failed_episodes": float(len(failed)), "reward_mean": math.nan,
                "success_rate": math.nan, "iteration_s": time.perf_counter() - t0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def _save_episodes(self, episodes: list[Episode]) -> None:
        if self.cfg.save_episodes <= 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "episodes.jsonl").open("a") as f:
            for ep in episodes[: self.cfg.save_episodes]:
                f.write(json.dumps(episode_record(ep, self.iteration + 1)) + "\n")

    # -- the loop -----------------------------------------------------------------------------------------------
    def evaluate(self, episodes: int | None = None, temperature: float = 0.0) -> Any:
        """Success of the policy now on ``episodes`` held-out tasks (default ``cfg.eval_episodes``; the evaluation
        seeds of ``agentgym eval``), one episode each, played with the trainer's engine: greedy by default, else
        sampled at ``temperature`` with the run's top-k and top-p. Returns an :class:`~agentgym.rollout.evaluation.EvalResult`."""
        from agentgym.rollout.evaluation import evaluate_policy

        cfg = self.cfg
        n = cfg.eval_episodes if episodes is None else episodes
        sampled = {"top_p": cfg.top_p, "top_k": cfg.top_k} if temperature > 0 else {}
        result, _ = evaluate_policy(
            self.model, self.tokenizer, cfg.env, cfg.env_kwargs, episodes=n, temperature=temperature,
            max_new_tokens=cfg.max_new_tokens, max_context_tokens=self._max_context, batch_size=min(n, 64),
            engine=self.engine, **sampled,
        )
        return result

    def train(self) -> list[dict[str, float]]:
        """Run ``cfg.iterations`` iterations (minus those already done when resuming), with a greedy held-out
        evaluation before and after (``cfg.eval_episodes``) and the learning curve drawn at the end.

        What the run wrote is summarised in ``self.report``: ``eval_before`` / ``eval_after`` (EvalResult as dicts),
        ``wall_s``, ``run_dir``, ``curve`` (the PNG) and ``model`` (the exported directory)."""
        if self.parallel is not None and not self.parallel.is_main:
            # Steps in lockstep with rank 0, which evaluates, logs and writes every file.
            self.cfg = dataclasses.replace(self.cfg, save_episodes=0)
            while self.iteration < self.cfg.iterations:
                self.step()
            return []
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        t_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2, default=str))
        logger = RunLogger(
            self.run_dir, dataclasses.asdict(self.cfg), use_wandb=self.cfg.wandb, project=self.cfg.wandb_project,
            resume_step=self.iteration if self.cfg.resume else None,  # what a killed run logged past its checkpoint
        )
        console = logger.console
        evals_path = self.run_dir / EVAL_FILE
        evals = json.loads(evals_path.read_text()) if self.cfg.resume and evals_path.is_file() else {}
        evaluates = self.cfg.eval_episodes > 0 and self._own_collector
        history = []
        live = bool(self.cfg.progress and console is not None and console.is_terminal)
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("reward {task.fields[reward]}"), TextColumn("success {task.fields[success]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        try:
            if evaluates and "before" not in evals:
                evals["before"] = self._held_out("before training", console)
                replace_text(evals_path, json.dumps(evals, indent=2, default=str))
            with Progress(*columns, console=console, disable=not live, transient=False) as progress:
                task = progress.add_task(
                    "train", total=self.cfg.iterations, completed=self.iteration, reward="-", success="-"
                )
                t_loop = time.perf_counter()
                while self.iteration < self.cfg.iterations:
                    metrics = self.step()
                    history.append(metrics)
                    eta = (time.perf_counter() - t_loop) / len(history) * (self.cfg.iterations - self.iteration)
                    logger.log(metrics, step=self.iteration, note="" if live else f"eta {clock(eta)}")
                    progress.update(task, advance=1, reward=f"{metrics['reward_mean']:.3f}",
                                    success=f"{metrics.get('success_rate', float('nan')):.3f}")
                    every = self.cfg.checkpoint_every
                    if every and self.iteration % every == 0 and self.iteration < self.cfg.iterations:
                        self.save()
            self.save()
            model_dir = self.export(self.run_dir / "model") if self.cfg.export else None
            if evaluates:
                evals["after"] = self._held_out(f"after {self.iteration} iterations", console)
                replace_text(evals_path, json.dumps(evals, indent=2, default=str))
            self.report = {
                "eval_before": evals.get("before"), "eval_after": evals.get("after"),
                "wall_s": time.perf_counter() - t_start, "run_dir": str(self.run_dir),
                "curve": self._draw_curve(), "model": str(model_dir) if model_dir is not None else None,
            }
        finally:
            logger.close()
        return history

    def _held_out(self, when: str, console: Any) -> dict[str, Any]:
        result = self.evaluate()
        if console is not None:
            lo, hi = result.success_ci95
            console.print(f"held-out greedy success {when}: {result.success_rate:.3f} (95% CI {lo:.2f}-{hi:.2f}, "
                          f"{result.episodes} tasks, {result.wall_s:.0f} s)", highlight=False)
        return dataclasses.asdict(result)

    def _draw_curve(self) -> str | None:
        """``run_dir/curve.png``: success and reward by iteration (None when nothing was logged)."""
        from agentgym.training.plot import load_run, plot_runs

        try:
            return str(plot_runs([load_run(self.run_dir)], self.run_dir / "curve.png", title=self.run_dir.name))
        except ValueError:  # no metric to draw (e.g. zero iterations)
            return None

    def save(self) -> Path:
        """Write a checkpoint of the current iteration under ``run_dir/checkpoints``."""
        return save_checkpoint(
            self.run_dir / "checkpoints", self.iteration, self._modules(), self.optimizer,
            {"config": dataclasses.asdict(self.cfg)},
        )

    def export(self, path: str | Path) -> Path:
        """Save the policy as a normal HF model directory (LoRA merged), with its tokenizer."""
        from agentgym.models import quiet_progress_bars

        with quiet_progress_bars():  # no "Writing model shards" bar in the run's output
            return self._export(Path(path))

    def _export(self, path: Path) -> Path:
        if self.cfg.lora_adapters:  # one model per adapter: path/<adapter>
            import copy

            for name in self.cfg.lora_adapters:
                merged = copy.deepcopy(self.model).merge_and_unload(adapter_names=[name])
                merged.save_pretrained(path / name)
                self.tokenizer.save_pretrained(path / name)
            return path
        model = self.model
        if self.cfg.lora_rank > 0:
            import copy

            model = copy.deepcopy(self.model).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def close(self) -> None:
        self.collector.close()
        if self.parallel is not None:
            self.parallel.close()


def _follow_rank_zero(model: Any, tokenizer: Any, cfg: TrainConfig) -> None:
    """The work of a trainer process that rank 0 started (:func:`agentgym.training.distributed.setup`): the same Trainer
    over the rank-0 policy's weights, stepping in lockstep with rank 0."""
    trainer = Trainer(cfg, model, tokenizer)
    try:
        trainer.train()
    finally:
        trainer.close()


class _StepZero:
    """Engine vs trainer logprobs over every row of the first minibatch, before any optimizer step."""

    def __init__(self) -> None:
        self.done = False
        self.diff_max = 0.0
        self.ratio_sum = 0.0
        self.tokens = 0

    def add(self, logprobs: torch.Tensor, micro: TensorDict) -> None:
        m = micro["loss_mask"].bool()
        diff = (logprobs - micro["old_logprobs"])[m]
        if diff.numel():
            self.diff_max = max(self.diff_max, float(diff.abs().max()))
            self.ratio_sum += float(diff.exp().sum())
            self.tokens += diff.numel()

    def result(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        return {"engine_trainer_logprob_diff_max": self.diff_max,
                "engine_trainer_ratio_mean": self.ratio_sum / self.tokens}


class _MinibatchMetrics:
    """One minibatch's metrics from its micro-batches: losses add up (each micro-batch's is its share of the
    minibatch loss), keys ending in _max/_min take the max/min, the rest are policy-token-weighted means."""

    LOSS_KEYS = ("actor/pg_loss", "actor/loss", "critic/value_loss")

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float], tokens: float) -> None:
        for k, v in metrics.items():
            v = float(v)
            if k in self.LOSS_KEYS:
                self.sums[k] = self.sums.get(k, 0.0) + v
            elif k.endswith("_max"):
                self.sums[k] = max(self.sums.get(k, v), v)
            elif k.endswith("_min"):
                self.sums[k] = min(self.sums.get(k, v), v)
            elif tokens > 0:
                self.sums[k] = self.sums.get(k, 0.0) + v * tokens
                self.weights[k] = self.weights.get(k, 0.0) + tokens

    def result(self) -> dict[str, float]:
        return {k: (v / self.weights[k] if k in self.weights else v) for k, v in self.sums.items()
                if k in self.weights or k in self.LOSS_KEYS or k.endswith(("_max", "_min"))}


def _clip_and_drop_zero_gradients(optimizer: torch.optim.Optimizer, max_norm: float,
                                   drop_zero: bool = True) -> tuple[float, list[bool]]:
    """Clip the gradients to global norm ``max_norm`` (0: no clipping) and, with ``drop_zero``, set to None the
    gradients of every parameter group whose gradient is exactly zero, so that the optimizer step leaves it alone
    (AdamW skips parameters without a gradient: its momentum would still move them). One pass over the gradients.

    Returns the global gradient norm before clipping and, per group, whether it steps.
    """
    norms, stepping = [], []
    for group in optimizer.param_groups:
        grads = [p.grad for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        norms.append(norm)
        live = bool(norm > 0)
        if drop_zero and not live:
            for p in group["params"]:
                p.grad = None
        stepping.append(live or not drop_zero)
    total = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
    if max_norm > 0 and total > max_norm:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch._foreach_mul_(grads, max_norm / (total + 1e-6))
    return total, stepping


def _rows_of(episodes: algos.EpisodeIndex, chosen: torch.Tensor) -> torch.Tensor:
    """The rows of the episodes numbered ``chosen``, episode by episode in that order."""
    rank = torch.full((episodes.num_episodes,), -1, dtype=torch.long)
    rank[chosen] = torch.arange(chosen.numel())
    row_rank = rank[episodes.row_episode]
    rows = torch.nonzero(row_rank >= 0).flatten()
    return rows[torch.argsort(row_rank[rows], stable=True)]


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """Reward, success, length and aggregation statistics of a collection."""
    returns = np.array([ep.total_reward for ep in episodes], dtype=np.float64)
    turns = np.array([len(ep.turns) for ep in episodes], dtype=np.float64)
    tokens = np.array([sum(len(t.action_ids) for t in ep.turns) for ep in episodes], dtype=np.float64)
    return {
        "reward_mean": float(returns.mean()),
        "reward_std": float(returns.std()),
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "turns_mean": float(turns.mean()),
        "episode_tokens_mean": float(tokens.mean()),
        "policy_tokens": float(tokens.sum()),
        "truncated_rate": float(np.mean([ep.truncated for ep in episodes])),
        "episodes": float(len(episodes)),
    }
