"""Training: a config built into its parts (:mod:`~agentgym.training.build`), the RL loop
(:mod:`~agentgym.training.trainer`), the trainer's logprobs (:mod:`~agentgym.training.policy`), data parallelism,
checkpoints, run logging, LoRA adapters, SFT (:mod:`~agentgym.training.sft`) and prompt optimization
(:mod:`~agentgym.training.apo`).
"""
