"""Supervised fine-tuning on trajectories: rejection sampling from an env, or a JSONL file of trajectories.

``agentgym train --algo sft`` runs :class:`SFTTrainer`. Two sources of trajectories:

- **rejection sampling** (the default): every iteration collects ``groups_per_iteration x group_size`` episodes
  with the current policy (the same collector and sampling as RL training), keeps the best (see
  :class:`~agentgym.algos.sft.SelectionConfig`: successful episodes, a return threshold, the top fraction by
  return, per task group or over the whole collection), and fine-tunes on them for ``epochs`` passes;
- **a data file** (``--data FILE.jsonl``): the same selection is applied once to the file's trajectories, and every
  iteration is ``epochs`` passes over what was kept.

Either way the loss is :func:`~agentgym.algos.sft.sft_loss`: the negative logprob of the tokens the policy produced,
with the batch's loss mask (prompts, observations and tool results are context, never targets).

Trajectory file formats (one JSON object per line, the two may be mixed):

1. **episode records**, as the trainer writes to ``RUN_DIR/episodes.jsonl`` (and ``agentgym eval --out-dir``)::

       {"turns": [{"prompt_ids": [...], "action_ids": [...], "logprobs": [...], "reward": 0.0}, ...],
        "return": 1.0, "success": true, "group_id": 7}

   ``prompt_ids`` is the whole context of the turn and ``action_ids`` what the policy produced; ``logprobs`` and
   ``finish_reason`` may be left out (SFT does not read them); ``success``, ``group_id``, ``episode_id``,
   ``agent_id``, ``terminated`` and ``truncated`` are optional. The ids must come from the policy's tokenizer.
2. **messages**, tokenized through the policy's chat template::

       {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                     {"role": "assistant", "content": "..."}, ...], "reward": 1.0}

   Every assistant message is a policy turn (its content and the template's end-of-turn token are trained); all
   other messages are context, and so is an assistant message marked ``"train": false`` (e.g. a failed attempt
   that the next reply repairs: the policy learns the repair, not the mistake). ``reward`` (default 1.0: a
   demonstration counts as a good episode), ``success`` (default: ``reward > 0``) and ``group_id`` are optional.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from agentgym.algos.aggregation import loss_normalizer, sequence_keys
from agentgym.algos.config import AlgoConfig
from agentgym.algos.sft import SelectionConfig, select_episodes, sft_loss
from agentgym.rollout.batch import Episode, Turn, to_batch, trim
from agentgym.training.policy import forward
from agentgym.training.trainer import Trainer, episode_metrics
from agentgym.training.train_config import TrainConfig

SFT_ALGO_KEYS = ("loss_agg",)
"""The AlgoConfig fields SFT reads (``--algo.loss_agg``)."""


@dataclass
class SFTConfig(TrainConfig):
    """A supervised fine-tuning run: TrainConfig's fields, plus where trajectories come from and which are kept."""

    algo: str = "sft"
    """sft (supervised fine-tuning on the kept trajectories)"""
    lr: float = 1e-5
    """AdamW learning rate for the policy"""
    data: str = ""
    """a JSONL file of trajectories to fine-tune on (episode records or messages); empty: rejection sampling"""
    top_frac: float = 1.0
    """keep the ceil(top_frac * n) highest-return episodes (per group with --per_group)"""
    min_reward: float | None = None
    """keep only episodes whose return is at least this (none: no threshold)"""
    success_only: bool = True
    """keep only successful episodes (the env's info["success"], else a positive return)"""
    per_group: bool = False
    """apply top_frac within each task's group of episodes instead of over the whole collection"""
    batch_size: int = 0
    """rows per optimizer step (0: each pass is split into --minibatches steps)"""
    eval_episodes: int = 0
    """after each iteration, play this many held-out tasks and log eval_success_rate (0: no evaluation)"""

    def algo_config(self) -> AlgoConfig:
        """The aggregation SFT shares with the RL losses (token-mean unless ``--algo.loss_agg`` says otherwise)."""
        if self.algo != "sft":
            raise ValueError(f"SFTConfig runs algo 'sft', got {self.algo!r}")
        extra = sorted(set(self.algo_kwargs) - set(SFT_ALGO_KEYS))
        if extra:
            raise ValueError(f"SFT reads only --algo.{' / --algo.'.join(SFT_ALGO_KEYS)}; got {extra}")
        group_size = self.group_size or 8
        return AlgoConfig(name="sft", group_size=group_size, loss_agg=self.algo_kwargs.get("loss_agg", "token-mean"))

    def selection(self) -> SelectionConfig:
        """The rejection-sampling filter these fields describe."""
        return SelectionConfig(
            top_frac=self.top_frac, min_reward=self.min_reward, success_only=self.success_only,
            per_group=self.per_group,
        )


# -- trajectory files -----------------------------------------------------------------------------------------------
def episode_from_record(record: dict[str, Any]) -> Episode:
    """An :class:`~agentgym.rollout.batch.Episode` from an episode record (see :func:`agentgym.rollout.batch.episode_record`)."""
    turns = []
    for k, t in enumerate(record["turns"]):
        action = [int(i) for i in t["action_ids"]]
        logprobs = [float(x) for x in t.get("logprobs") or [0.0] * len(action)]
        if len(logprobs) != len(action):
            raise ValueError(f"turn {k}: {len(action)} action_ids but {len(logprobs)} logprobs")
        turns.append(Turn([int(i) for i in t["prompt_ids"]], action, logprobs, float(t.get("reward", 0.0)),
                          str(t.get("finish_reason", "stop"))))
    info = dict(record.get("info") or {})
    if "success" in record:
        info["success"] = bool(record["success"])
    return Episode(
        turns,
        group_id=int(record.get("group_id", 0)),
        episode_id=int(record.get("episode_id", 0)),
        agent_id=int(record.get("agent_id", 0)),
        terminated=bool(record.get("terminated", True)),
        truncated=bool(record.get("truncated", False)),
        info=info,
    )


def episode_from_messages(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    reward: float = 1.0,
    success: bool | None = None,
    tools: list[dict] | None = None,
) -> Episode:
    """A conversation as an :class:`~agentgym.rollout.batch.Episode`, through ``tokenizer``'s chat template.

    Each assistant message (but those marked ``"train": false``) becomes a turn: its context is the template's
    prompt for the messages before it (generation prompt included), its action the template's rendering of the reply
    up to and including the first end-of-turn token. ``reward`` lands on the last turn; logprobs are zeros (SFT does not read them).
    """
    from agentgym.chat import ChatTemplate

    chat = ChatTemplate(tokenizer, tools=tools)
    turns: list[Turn] = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"message {k} is not a {{'role': ..., 'content': ...}} dict: {message!r}")
    rendered = [{key: v for key, v in m.items() if key != "train"} for m in messages]  # the template's view
    for k, message in enumerate(rendered):
        if message["role"] != "assistant" or messages[k].get("train", True) is False:
            continue
        prefix = rendered[:k]
        before = chat.render(prefix, add_generation_prompt=True)
        full = chat.render([*prefix, message], add_generation_prompt=False)
        if not full.startswith(before):  # the template re-rendered the past: keep what follows the common part
            before = before[: len(os.path.commonprefix([before, full]))]
        ids = chat.encode(full[len(before) :])
        stop = next((i for i, t in enumerate(ids) if t in chat.stop_token_ids), None)
        action = ids if stop is None else ids[: stop + 1]
        if not action:
            raise ValueError(f"message {k}: the chat template rendered the assistant reply as no tokens")
        turns.append(Turn(chat.prompt_ids(prefix), action, [0.0] * len(action), 0.0, "stop"))
    if not turns:
        raise ValueError("the conversation has no assistant message to train on")
    turns[-1].reward = float(reward)
    return Episode(turns, terminated=True, info={"success": bool(reward > 0 if success is None else success)})


def load_trajectories(path: str | Path, tokenizer: Any = None) -> list[Episode]:
    """Read a JSONL file of trajectories (episode records and/or messages; see the module docstring).

    ``tokenizer`` is needed for messages lines; its vocabulary size also checks the ids of episode records.
    Episodes without a ``group_id`` each get their own group.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory file at {path}")
    vocab = len(tokenizer) if tokenizer is not None else None
    episodes: list[Episode] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("a line must hold a JSON object")
            if "turns" in record:
                ep = episode_from_record(record)
            elif "messages" in record:
                if tokenizer is None:
                    raise ValueError("messages lines need the policy's tokenizer")
                ep = episode_from_messages(
                    record["messages"], tokenizer, reward=float(record.get("reward", 1.0)),
                    success=record.get("success"), tools=record.get("tools"),
                )
            else:
                raise ValueError("expected 'turns' (an episode record) or 'messages' (a conversation)")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: cannot read this trajectory: {e}") from e
        if vocab is not None:
            top = max((max(t.prompt_ids + t.action_ids, default=0) for t in ep.turns), default=0)
            if top >= vocab:
                raise ValueError(f"{where}: token id {top} is outside the tokenizer's vocabulary ({vocab}); "
                                 "episode records must come from the policy's tokenizer")
        if "group_id" not in record:
            ep.group_id = -1 - len(episodes)  # its own group, apart from any explicit group id
        ep.episode_id = int(record.get("episode_id", len(episodes)))
        episodes.append(ep)
    if not episodes:
        raise ValueError(f"{path} holds no trajectories")
    return episodes


# -- the loop -------------------------------------------------------------------------------------------------------
class SFTTrainer(Trainer):
    """Fine-tunes a policy on its best episodes (rejection sampling) or on a file of trajectories.

    Same arguments as :class:`~agentgym.training.trainer.Trainer`; ``cfg`` is an :class:`SFTConfig`. ``train()``, ``save()``,
    ``export()`` and resuming work as for RL; each iteration's metrics add ``kept_episodes``, ``kept_frac`` and the
    ``sft/*`` loss metrics.
    """

    def __init__(self, cfg: SFTConfig, model: Any = None, tokenizer: Any = None, engine: Any = None,
                 collector: Any = None):
        if cfg.lora_adapters:
            raise ValueError(f"SFT trains one policy, but lora_adapters = {cfg.lora_adapters}: fine-tune each role's "
                             "policy in its own SFT run (--lora_rank alone trains one adapter)")
        super().__init__(cfg, model=model, tokenizer=tokenizer, engine=engine, collector=collector)
        self.cfg: SFTConfig = cfg
        self.selection = cfg.selection()
        self.data: list[Episode] | None = None
        self.kept_data: list[Episode] = []
        if cfg.data:
            self.data = load_trajectories(cfg.data, self.tokenizer)
            self.kept_data = select_episodes(self.data, self.selection)
            if not self.kept_data:
                raise ValueError(
                    f"the selection keeps none of the {len(self.data)} trajectories in {cfg.data}; loosen it "
                    "(--success_only false, --min_reward, --top_frac)"
                )

    def update(self, batch: TensorDict) -> dict[str, float]:
        """``epochs`` passes of SFT steps over ``batch``'s rows; returns the averaged loss metrics."""
        cfg = self.cfg
        n = batch.batch_size[0]
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + self.iteration)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss_sum, nll_sum, tokens, steps, gnorm_sum = 0.0, 0.0, 0.0, 0, 0.0
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            chunks = order.split(cfg.batch_size) if cfg.batch_size > 0 else order.chunk(max(1, min(cfg.minibatches, n)))
            for idx in chunks:
                mini = sequence_keys(batch[idx], self.algo)
                norm = loss_normalizer(mini, self.algo)
                self.optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                # The RL update's micro-batches: rows of similar length within the activation budget, with
                # activation checkpointing when one is larger than the budget (--activation_memory_mb).
                for _, rows in self._micro_batches(mini):
                    micro = trim(mini[rows])
                    self._checkpointing(micro)
                    # T = 1: SFT fits the model's own distribution, whatever temperature sampled the data.
                    out = forward(self.model, micro["input_ids"], micro["attention_mask"], micro["loss_mask"], 1.0)
                    loss, metrics = sft_loss(out.logprobs, micro, norm, self.algo.loss_agg)
                    loss.backward()
                    step_loss += metrics["sft/loss"]
                    nll_sum += metrics["sft/nll"] * metrics["sft/tokens"]
                    tokens += metrics["sft/tokens"]
                if cfg.max_grad_norm > 0:
                    gnorm_sum += float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                self.optimizer.step()
                loss_sum += step_loss
                steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        out_metrics = {"sft/loss": loss_sum / max(steps, 1), "sft/nll": nll_sum / max(tokens, 1.0),
                       "sft/steps": float(steps)}
        if cfg.max_grad_norm > 0:
            out_metrics["grad_norm"] = gnorm_sum / max(steps, 1)
        return out_metrics

    def step(self) -> dict[str, float]:
        """One iteration: collect and select (or take the file's kept trajectories), fine-tune, push weights."""
        t0 = time.perf_counter()
        if self.data is None:
            episodes = self.collect()
            self._save_episodes(episodes)
            metrics = episode_metrics(episodes)
            metrics.update(getattr(self.collector, "last_stats", {}))
            kept = select_episodes(episodes, self.selection)
        else:
            episodes, kept = self.data, self.kept_data
            metrics = {"data_episodes": float(len(episodes))}
        t_rollout = time.perf_counter() - t0
        metrics["kept_episodes"] = float(len(kept))
        metrics["kept_frac"] = len(kept) / max(len(episodes), 1)
        if kept:
            metrics["kept_reward_mean"] = sum(ep.total_reward for ep in kept) / len(kept)
        t1 = time.perf_counter()
        if kept:
            batch, _ = to_batch(kept, pad_id=self.tokenizer.pad_token_id or 0)
            if bool(batch["loss_mask"].any()):
                metrics.update(self.update(batch))
                self.engine_weights_changed()
        t_train = time.perf_counter() - t1
        if self.cfg.eval_episodes > 0:
            result = self.evaluate(self.cfg.eval_episodes, temperature=self.cfg.temperature)
            metrics.update(eval_success_rate=result.success_rate, eval_reward_mean=result.reward_mean)
        if self.data is not None:  # the file's episodes say nothing about the current policy: report the eval's
            metrics["reward_mean"] = metrics.get("eval_reward_mean", math.nan)
            metrics["success_rate"] = metrics.get("eval_success_rate", math.nan)
        metrics["rollout_s"], metrics["train_s"] = t_rollout, t_train
        metrics["iteration_s"] = time.perf_counter() - t0
        metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.iteration += 1
        return metrics


__all__ = [
    "SFTConfig",
    "SFTTrainer",
    "episode_from_messages",
    "episode_from_record",
    "load_trajectories",
]
