"""What one training run is: :class:`TrainConfig`, every field with its default and its docstring (the command
line's ``--help`` reads them), and ``--env.KEY`` / ``--algo.KEY`` as short forms (:data:`CLI_ALIASES`).

:class:`~agentgym.training.trainer.Trainer` runs one; :mod:`agentgym.training.build` turns one into its parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentgym import algos, registration
from agentgym.engines import check_engine_name


@dataclass
class TrainConfig:
    """Everything a training run needs; every field has a default, so ``TrainConfig()`` runs. The defaults are the
    main job (``agentgym train``): GRPO on 2-operand addition with the embedded SmolLM2-135M-Instruct, which learns
    it within minutes on a laptop CPU."""

    env: str = "agentgym/Addition-v0"
    """registered env id (see `agentgym envs`)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env, e.g. --env.high 10"""
    algo: str = "grpo"
    """named algorithm: ppo | grpo | dr_grpo | dapo | gspo | rloo | reinforce_pp (| sft | apo from the CLI)"""
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    """AlgoConfig fields to override, e.g. --algo.kl_coef 0.01"""
    model: str = "SmolLM2-135M-Instruct"
    """the policy: the embedded default's name, a local HF directory, or a hub id"""
    iterations: int = 15
    """collect-and-update iterations"""
    groups_per_iteration: int = 8
    """tasks per iteration"""
    group_size: int = 0
    """episodes per task (the GRPO group); 0 takes the algorithm's own (8 for the GRPO family, 1 for PPO and
    REINFORCE++)"""
    max_new_tokens: int = 16
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
    """rows per forward/backward pass (gradient accumulation within a minibatch); rows of similar length go
    together and each micro-batch is cut to its longest row, and an episode split into several rows is never
    split across micro-batches (with trainer_procs > 1: fixed chunks of rows in order)"""
    activation_memory_mb: int = 256
    """activation memory a micro-batch may take (estimated from the model's shapes): micro-batches hold fewer rows
    when theirs would exceed it (0: no token limit)"""
    activation_checkpointing: str = "auto"
    """recompute each decoder layer's activations in backward instead of keeping them: on | off | auto (on for a
    micro-batch whose activations still exceed activation_memory_mb, e.g. one long episode)"""
    lr: float = 1e-5
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
    adapter named by its episode's info["policy"], and Trainer.engine_for(name) samples with it (agentgym.training.adapters)"""
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
    eval_episodes: int = 64
    """greedy episodes on held-out tasks (the evaluation seeds of ``agentgym eval``) before the first iteration and
    after the last; written to run_dir/eval.json, the run ends with before -> after (0: no evaluation)"""
    save_episodes: int = 8
    """episodes per iteration written to run_dir/episodes.jsonl for `agentgym inspect` (0: none)"""
    max_failed_iterations: int = 3
    """stop, with the first errors, after this many iterations in a row in which every episode failed (0: never)"""
    rollout_workers: int = 0
    """roll out on N Ray actors, each with its own engine (0: in this process); see docs/scaling.md"""
    trainer_procs: int = 1
    """train with M torch.distributed (DDP) processes; on one machine the others are spawned, or use torchrun"""
    engine: str = "transformers"
    """inference engine: transformers (in-process, shares the trained module) | vllm (a GPU, or vLLM's CPU build;
    weights pushed after each update) | a name registered with agentgym.engines.register_engine"""

    def algo_config(self) -> algos.AlgoConfig:
        kwargs = dict(self.algo_kwargs)
        if self.group_size:
            kwargs.setdefault("group_size", self.group_size)
        return algos.get_algorithm(self.algo, **kwargs)

    def check(self, env: bool = True) -> None:
        """Raise ``KeyError`` / ``ValueError`` for a config that cannot run, before anything heavy loads.

        ``env=False`` leaves ``env`` / ``env_kwargs`` unchecked (a trainer given its own collector never uses them).
        """
        self.algo_config()
        registration.load_plugins()  # engines and envs registered by installed packages
        if env:
            try:  # an unknown env (KeyError), or an argument it does not take
                registration.check_kwargs(self.env, self.env_kwargs)
            except TypeError as e:
                raise ValueError(str(e)) from e
        check_engine_name(self.engine)

CLI_ALIASES = {"env": "env_kwargs", "algo": "algo_kwargs"}
"""``--env.KEY`` and ``--algo.KEY`` are short for ``--env_kwargs.KEY`` and ``--algo_kwargs.KEY``."""


__all__ = ["CLI_ALIASES", "TrainConfig"]
