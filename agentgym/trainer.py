"""The training loop: collect -> batch -> advantages -> K epochs of clipped updates -> push weights -> log.

Each part lives in its own module; this one only orders them:
:mod:`agentgym.collector` (rollouts), :mod:`agentgym.batch` (the TensorDict), :mod:`agentgym.algos`
(advantages and losses, pure functions), :mod:`agentgym.policy` (the trainer's logprobs), :mod:`agentgym.tracking`
(metrics) and :mod:`agentgym.checkpoint` (resume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from agentgym import algos, distributed
from agentgym.batch import Episode, to_batch
from agentgym.checkpoint import load_checkpoint, save_checkpoint
from agentgym.collector import Collector
from agentgym.policy import ValueHead, forward, hidden_size
from agentgym.tracking import RunLogger


@dataclass
class TrainConfig:
    """Everything a training run needs; every field has a default, so ``TrainConfig()`` runs."""

    env: str = "agentgym/GuessNumber-v0"
    """registered env id (see `agentgym envs`)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env, e.g. --env.high 10"""
    algo: str = "grpo"
    """named algorithm: ppo | grpo | dr_grpo | dapo | gspo | rloo | reinforce_pp (| sft | apo from the CLI)"""
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    """AlgoConfig fields to override, e.g. --algo.kl_coef 0.01"""
    model: str = "SmolLM2-135M-Instruct"
    """the policy: the embedded default's name, a local HF directory, or a hub id"""
    iterations: int = 20
    """collect-and-update iterations"""
    groups_per_iteration: int = 4
    """tasks per iteration"""
    group_size: int = 8
    """episodes per task (the GRPO group); 0 takes the algorithm's default"""
    max_new_tokens: int = 32
    """tokens the policy may generate per turn"""
    temperature: float = 1.0
    """sampling temperature (the trainer's logprobs use the same)"""
    top_p: float = 1.0
    """nucleus sampling threshold (1 disables)"""
    top_k: int = 0
    """top-k sampling (0 disables)"""
    max_context_tokens: int = 2048
    """longest context an episode may reach; longer episodes are truncated"""
    epochs: int = 1
    """passes over each iteration's batch"""
    minibatches: int = 1
    """optimizer steps per epoch (the batch's rows are split into this many minibatches)"""
    micro_batch_size: int = 8
    """rows per forward/backward pass (gradient accumulation within a minibatch)"""
    lr: float = 2e-6
    """AdamW learning rate for the policy"""
    value_lr: float = 1e-4
    """AdamW learning rate for the value head (PPO)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm (0 disables)"""
    lora_rank: int = 0
    """LoRA rank via peft (0 trains all weights)"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lora_adapters: list[str] = field(default_factory=list)
    """separate LoRA adapters on one base model, one per trainable policy (needs lora_rank > 0): a row trains the
    adapter named by its episode's info["policy"], and Trainer.engine_for(name) samples with it (agentgym.adapters)"""
    seed: int = 0
    """seeds tasks, sampling and minibatch order"""
    run_dir: str = ""
    """where metrics, config and checkpoints go (default runs/<env>-<algo>-<time>)"""
    checkpoint_every: int = 0
    """save a checkpoint every N iterations (0: only at the end)"""
    resume: str = ""
    """a run dir or checkpoint to resume from"""
    export: bool = True
    """write the trained policy as a HF model directory (run_dir/model) at the end"""
    wandb: bool = True
    """log to wandb (mode from WANDB_MODE; offline without credentials)"""
    wandb_project: str = "agentgym"
    """wandb project"""
    env_threads: int = 0
    """step envs in a thread pool of this size (for envs that wait on I/O)"""
    progress: bool = True
    """show a progress bar"""
    save_episodes: int = 8
    """episodes per iteration written to run_dir/episodes.jsonl for `agentgym inspect` (0: none)"""
    rollout_workers: int = 0
    """roll out on N Ray actors, each with its own engine (0: in this process); see docs/scaling.md"""
    trainer_procs: int = 1
    """train with M torch.distributed (DDP) processes; on one machine the others are spawned, or use torchrun"""

    def algo_config(self) -> algos.AlgoConfig:
        kwargs = dict(self.algo_kwargs)
        if self.group_size:
            kwargs.setdefault("group_size", self.group_size)
        return algos.get_algorithm(self.algo, **kwargs)


CLI_ALIASES = {"env": "env_kwargs", "algo": "algo_kwargs"}
"""``--env.KEY`` and ``--algo.KEY`` are short for ``--env_kwargs.KEY`` and ``--algo_kwargs.KEY``."""


def _default_run_dir(cfg: TrainConfig) -> str:
    name = cfg.env.split("/")[-1]
    return str(Path("runs") / f"{name}-{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}")


class Trainer:
    """Trains a policy on a registered env with a named algorithm.

    Args:
        cfg: the run config.
        model, tokenizer: a policy to train instead of loading ``cfg.model`` (tests pass tiny ones).
        engine: the inference engine; by default a :class:`~agentgym.engines.TransformersEngine` sharing the
            trained module, so pushing weights costs nothing on one machine.
        collector: anything with ``collect(seed) -> list[Episode]`` (e.g. a
            :class:`~agentgym.multi_agent.MultiAgentCollector` whose trainable policy is ``self.engine``), built
            from the trainer's engine by a callable ``collector(trainer)``; by default a
            :class:`~agentgym.collector.Collector` over ``cfg.env``.
    """

    def __init__(
        self, cfg: TrainConfig, model: Any = None, tokenizer: Any = None, engine: Any = None, collector: Any = None
    ):
        import agentgym
        from agentgym.engines import SamplingParams, TransformersEngine

        self.cfg = cfg
        self.algo = cfg.algo_config()
        torch.manual_seed(cfg.seed)
        if model is None:
            from agentgym.models import load_model

            model, tokenizer = load_model(cfg.model)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with the model")
        model.eval()  # no dropout: the engine and the trainer must compute the same distribution
        if cfg.lora_adapters:
            if cfg.lora_rank <= 0 or cfg.trainer_procs > 1 or cfg.rollout_workers > 0:
                raise ValueError(
                    "lora_adapters needs lora_rank > 0, one trainer process and in-process rollouts (its adapters "
                    f"share the engine); got lora_rank={cfg.lora_rank}, trainer_procs={cfg.trainer_procs}, "
                    f"rollout_workers={cfg.rollout_workers}"
                )
            from agentgym.adapters import add_adapters

            model = add_adapters(model, cfg.lora_adapters, cfg.lora_rank, cfg.lora_alpha)
        elif cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules="all-linear")
            )
        self.model, self.tokenizer = model, tokenizer
        self.value_head = ValueHead(hidden_size(model)) if self.algo.needs_values else None
        self.ref_model = None
        if self.algo.needs_ref_logprobs and cfg.lora_rank == 0:
            import copy

            self.ref_model = copy.deepcopy(model).requires_grad_(False)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
        if self.value_head is not None:
            groups.append({"params": list(self.value_head.parameters()), "lr": cfg.value_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.engine = engine if engine is not None else TransformersEngine(model, tokenizer)
        self.params = SamplingParams(
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens
        )
        env_kwargs = dict(cfg.env_kwargs)
        # An episode may not outgrow the model: the env truncates before the engine would refuse the context.
        max_context = min(cfg.max_context_tokens, getattr(self.engine, "max_model_len", None) or cfg.max_context_tokens)
        if collector is None and cfg.rollout_workers > 0 and distributed.is_main_process():
            from agentgym.ray_rollout import RayCollector

            collector = RayCollector.from_trainer
        self.collector = collector(self) if collector is not None else Collector(
            lambda: agentgym.make(
                cfg.env, tokenizer=tokenizer, max_context_tokens=max_context, engine=self.engine,
                **env_kwargs,
            ),
            self.engine,
            self.params,
            num_groups=cfg.groups_per_iteration,
            group_size=self.algo.group_size,
            num_threads=cfg.env_threads,
        )
        if self.algo.max_tokens is None:
            # The policy-token budget of an episode (Dr. GRPO's normalizer, DAPO's overlong limit).
            envs = getattr(getattr(self.collector, "venv", None), "envs", None) or [None]
            turns = getattr(getattr(envs[0], "env", None), "max_turns", None) or 1
            self.algo = dataclasses.replace(self.algo, max_tokens=cfg.max_new_tokens * int(turns))
        self.iteration = 0
        self.run_dir = Path(cfg.run_dir or _default_run_dir(cfg))
        if cfg.resume:
            state = load_checkpoint(cfg.resume, self._modules(), self.optimizer)
            self.iteration = int(state["step"])
            self.engine_weights_changed()
        self.parallel: distributed.DataParallel | None = None
        if distributed.wanted(cfg):
            self.parallel = distributed.setup(self)

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
        from agentgym.adapters import AdapterEngine

        if adapter not in self.cfg.lora_adapters:
            raise KeyError(f"no adapter {adapter!r}; cfg.lora_adapters = {self.cfg.lora_adapters}")
        return AdapterEngine(self.engine, self.model, adapter)

    def _micro_batches(self, batch: TensorDict) -> Any:
        """``(adapter, micro-batch)`` pairs covering ``batch``: chunks of ``micro_batch_size`` rows, and with
        ``cfg.lora_adapters`` each chunk the rows of one adapter (in adapter order), which it makes active."""
        mb = self.cfg.micro_batch_size
        if not self.cfg.lora_adapters:
            for i in range(0, batch.batch_size[0], mb):
                yield None, batch[i : i + mb]
            return
        from agentgym.adapters import use_adapter

        for a, name in enumerate(self.cfg.lora_adapters):
            rows = batch[batch["adapter_id"] == a]
            if rows.batch_size[0]:
                use_adapter(self.model, name)
            for i in range(0, rows.batch_size[0], mb):
                yield name, rows[i : i + mb]

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

    def collect(self) -> list[Episode]:
        seed = self.cfg.seed * 1_000_003 + self.iteration * self.cfg.groups_per_iteration
        if self.parallel is not None:  # rank 0 rolls out; every trainer process gets the same episodes
            return self.parallel.broadcast(self.collector.collect(seed) if self.parallel.is_main else None)
        return self.collector.collect(seed)

    @torch.no_grad()
    def _score(self, batch: TensorDict) -> TensorDict:
        """Fill what the algorithm needs before the update: old values, reference logprobs."""
        values, refs, olds = [], [], []
        need_old = self.algo.needs_trainer_logprobs
        for _, micro in self._micro_batches(batch):  # in row order: a batch with adapters is sorted by adapter
            if self.value_head is not None or need_old:
                out = forward(
                    self.model, micro["input_ids"], micro["attention_mask"], micro["loss_mask"],
                    self.cfg.temperature, value_head=self.value_head,
                )
                values.append(out.values)
                olds.append(out.logprobs)
            if self.algo.needs_ref_logprobs:
                refs.append(self._ref_logprobs(micro))
        if self.value_head is not None:
            batch["values"] = torch.cat(values)
        if need_old:
            batch["trainer_old_logprobs"] = torch.cat(olds)
        if refs:
            batch["ref_logprobs"] = torch.cat(refs)
        return batch

    def _ref_logprobs(self, micro: TensorDict) -> torch.Tensor:
        args = (micro["input_ids"], micro["attention_mask"], micro["loss_mask"], self.cfg.temperature)
        if self.ref_model is not None:
            return forward(self.ref_model, *args).logprobs
        with self.model.disable_adapter():  # LoRA: the reference is the base model
            return forward(self.model, *args).logprobs

    def update(self, batch: TensorDict) -> dict[str, float]:
        """K epochs of minibatch updates on one batch; returns averaged loss metrics."""
        cfg, algo = self.cfg, self.algo
        n = batch.batch_size[0]
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + self.iteration)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        first = True
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for idx in order.chunk(max(1, min(cfg.minibatches, n))):
                mini = batch[idx]
                norm = algos.loss_normalizer(mini, algo)
                policy, scale = self.model, 1.0
                if self.parallel is not None:  # this process's rows, the whole minibatch's counts
                    mini, norm = self.parallel.shard(mini, algo)
                    policy, scale = self.parallel.module, self.parallel.loss_scale
                self.optimizer.zero_grad(set_to_none=True)
                for _, micro in self._micro_batches(mini):
                    out = forward(
                        policy, micro["input_ids"], micro["attention_mask"], micro["loss_mask"],
                        cfg.temperature, value_head=self.value_head, with_entropy=True,
                    )
                    loss, metrics = algos.actor_loss(out.logprobs, micro, algo, norm, entropy=out.entropy)
                    if self.value_head is not None:
                        vloss, vmetrics = algos.critic_loss(out.values, micro, algo, norm)
                        loss = loss + vloss
                        metrics = {**metrics, **vmetrics}
                    (loss * scale).backward()
                    if first:
                        # Before any update the trainer's policy is the one that sampled: its ratio to the
                        # engine's logprobs measures engine/trainer mismatch (it should be 1).
                        m = micro["loss_mask"]
                        diff = (out.logprobs.detach() - micro["old_logprobs"])[m]
                        if diff.numel():
                            sums["engine_trainer_logprob_diff_max"] = float(diff.abs().max())
                            sums["engine_trainer_ratio_mean"] = float(diff.exp().mean())
                            counts["engine_trainer_logprob_diff_max"] = counts["engine_trainer_ratio_mean"] = 1
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                        counts[k] = counts.get(k, 0) + 1
                first = False
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                if cfg.max_grad_norm > 0:
                    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(gnorm)
                    counts["grad_norm"] = counts.get("grad_norm", 0) + 1
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {k: sums[k] / counts[k] for k in sums}
        return metrics if self.parallel is None else self.parallel.reduce_metrics(metrics)

    def step(self) -> dict[str, float]:
        """One iteration: collect, build the batch, advantages, update, push weights. Returns its metrics."""
        t0 = time.perf_counter()
        episodes = self.collect()
        t_rollout = time.perf_counter() - t0
        self._save_episodes(episodes)
        batch, agg = to_batch(episodes, pad_id=self.tokenizer.pad_token_id or 0)
        if self.cfg.lora_adapters and batch.batch_size[0]:
            batch["adapter_id"] = self._adapter_ids(episodes, batch)
            batch = batch[torch.argsort(batch["adapter_id"], stable=True)]
        metrics = episode_metrics(episodes)
        metrics.update(agg)
        metrics.update(getattr(self.collector, "last_stats", {}))
        metrics["rollout_tokens_per_s"] = metrics["policy_tokens"] / max(t_rollout, 1e-9)
        if self.algo.dynamic_sampling:
            batch, dropped = algos.filter_groups(batch, self.algo)
            metrics["dropped_groups"] = float(dropped)
        t1 = time.perf_counter()
        if batch.batch_size[0] > 0 and bool(batch["loss_mask"].any()):
            batch = self._score(batch)
            batch = algos.shape_rewards(batch, self.algo)
            batch = algos.compute_advantages(batch, self.algo)
            metrics.update(self.update(batch))
            self.engine_weights_changed()
        t_train = time.perf_counter() - t1
        trained_tokens = float(batch["attention_mask"].sum()) if batch.batch_size[0] else 0.0
        metrics["train_tokens_per_s"] = trained_tokens * self.cfg.epochs / max(t_train, 1e-9)
        metrics["rollout_s"], metrics["train_s"] = t_rollout, t_train
        metrics["iteration_s"] = time.perf_counter() - t0
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.iteration += 1
        return metrics

    def _save_episodes(self, episodes: list[Episode]) -> None:
        if self.cfg.save_episodes <= 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "episodes.jsonl").open("a") as f:
            for ep in episodes[: self.cfg.save_episodes]:
                f.write(json.dumps(episode_record(ep, self.iteration + 1)) + "\n")

    # -- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        """Run ``cfg.iterations`` iterations (minus those already done when resuming)."""
        if self.parallel is not None and not self.parallel.is_main:
            return self.parallel.follow(self)  # steps in lockstep with rank 0, which logs and saves
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2, default=str))
        logger = RunLogger(
            self.run_dir, dataclasses.asdict(self.cfg), use_wandb=self.cfg.wandb, project=self.cfg.wandb_project
        )
        history = []
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("reward {task.fields[reward]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        try:
            with Progress(*columns, disable=not self.cfg.progress, transient=False) as progress:
                task = progress.add_task(
                    "train", total=self.cfg.iterations, completed=self.iteration, reward="-"
                )
                while self.iteration < self.cfg.iterations:
                    metrics = self.step()
                    history.append(metrics)
                    logger.log(metrics, step=self.iteration)
                    progress.update(task, advance=1, reward=f"{metrics['reward_mean']:.3f}")
                    every = self.cfg.checkpoint_every
                    if every and self.iteration % every == 0 and self.iteration < self.cfg.iterations:
                        self.save()
            self.save()
            if self.cfg.export:
                self.export(self.run_dir / "model")
        finally:
            logger.close()
        return history

    def save(self) -> Path:
        """Write a checkpoint of the current iteration under ``run_dir/checkpoints``."""
        return save_checkpoint(
            self.run_dir / "checkpoints", self.iteration, self._modules(), self.optimizer,
            {"config": dataclasses.asdict(self.cfg)},
        )

    def export(self, path: str | Path) -> Path:
        """Save the policy as a normal HF model directory (LoRA merged), with its tokenizer."""
        path = Path(path)
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


def episode_record(ep: Episode, iteration: int) -> dict[str, Any]:
    """An episode as a JSON-able dict: every turn's context, sampled ids, logprobs and reward."""
    return {
        "iteration": iteration,
        "episode_id": ep.episode_id,
        "group_id": ep.group_id,
        "agent_id": ep.agent_id,
        "return": ep.total_reward,
        "success": ep.success,
        "terminated": ep.terminated,
        "truncated": ep.truncated,
        "turns": [
            {
                "prompt_ids": t.prompt_ids,
                "action_ids": t.action_ids,
                "logprobs": t.logprobs,
                "reward": t.reward,
                "finish_reason": t.finish_reason,
            }
            for t in ep.turns
        ],
        "info": scalar_info(ep.info),
    }


def scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of an episode's info (strings, numbers, booleans, None)."""
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}


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


def evaluate(trainer: Trainer, seeds: int = 1, greedy: bool = False) -> float:
    """Success rate of the current policy over ``seeds`` collections on held-out task seeds.

    Sampling is as in training unless ``greedy`` (temperature 0: the policy's most likely reply).
    """
    collector = trainer.collector
    saved = collector.params
    if greedy:
        collector.params = dataclasses.replace(saved, temperature=0.0)
    try:
        rates = []
        for s in range(seeds):
            eps = collector.collect(10_000_019 + s * trainer.cfg.groups_per_iteration)
            rates.append(np.mean([ep.success for ep in eps]))
    finally:
        collector.params = saved
    return float(np.mean(rates)) if rates else math.nan
