"""Automatic prompt optimization: beam search over an env's system prompt, edits proposed by a critic model.

``agentgym train --algo apo`` runs :func:`optimize_prompt`. The policy's weights never change; its system prompt
does. The search, in the spirit of ProTeGi (Pryzant et al., "Automatic Prompt Optimization with 'Gradient Descent'
and Beam Search"):

1. score the initial prompt (the env's own unless ``initial_prompt`` is given) on the validation set: the mean
   episode return over ``val_tasks`` fixed tasks (env reset seeds ``val_seed + i``) x ``val_samples`` episodes,
   with sampling seeded the same way for every candidate, so candidates are compared on equal terms;
2. each round, for each prompt in the beam: play ``critique_tasks`` training tasks (new seeds every round), show
   the critic up to ``max_failures`` failed episodes with the prompt, and take up to ``num_edits`` rewritten
   prompts from its replies;
3. score every new candidate on the validation set; the beam becomes the ``beam_width`` best prompts seen so far;
4. after ``rounds`` rounds (or ``max_seconds``), the best prompt and the score of every candidate are written to
   ``RUN_DIR/apo.json`` (and one line per round to ``metrics.jsonl``).

The critic is anything with ``propose(prompt, failures, num, seed) -> list[str]`` (:class:`Critic`), a plain
callable ``fn(prompt, failures) -> str | list[str]``, or a chat model behind :class:`ChatCritic`: an engine
(:class:`EngineChat`, the policy's own by default) or an OpenAI-compatible endpoint (:class:`OpenAIChat`).

The critics live in :mod:`agentgym.training.critics`; the system prompt of any
:class:`~agentgym.message_env.MessageEnv` is set by :class:`~agentgym.message_env.SystemPromptEnv`, which replaces
(or inserts, or removes) the leading system message of the env's opening messages.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentgym.message_env import ChatTokenEnv, SystemPromptEnv
from agentgym.training.critics import ChatCritic, Critic, EngineChat, OpenAIChat, as_critic, transcript

APO_ALIASES = {"env": "env_kwargs"}
"""``--env.KEY`` is short for ``--env_kwargs.KEY``."""

VAL_SEED = 20_000_003
"""Default reset seed of the first validation task (apart from training tasks and the held-out eval tasks)."""


def make_prompted_env(
    env_id: str, prompt: str | None, tokenizer: Any, max_context_tokens: int = 2048,
    env_kwargs: dict[str, Any] | None = None,
) -> ChatTokenEnv:
    """``agentgym.make(env_id, **env_kwargs)`` with its system prompt set to ``prompt`` by a
    :class:`~agentgym.message_env.SystemPromptEnv` (None: no system message); the wrapper is the returned env's
    ``unwrapped_env``, so the prompt can be changed between episodes."""
    import agentgym

    token_level = TypeError(f"{env_id!r} is a token-level env; prompt optimization sets the system message of chat "
                            "envs (a MessageEnv registered with agentgym.register)")
    try:
        env = agentgym.make(env_id, tokenizer=tokenizer, max_context_tokens=max_context_tokens,
                            message_wrapper=lambda inner: SystemPromptEnv(inner, prompt), **(env_kwargs or {}))
    except TypeError as e:
        if "is a TokenEnv" in str(e):  # make refuses the wrapper arguments of a token-level env
            raise token_level from e
        raise
    if not isinstance(env, ChatTokenEnv):  # a TokenEnv that declares them all itself
        env.close()
        raise token_level
    return env


def env_system_prompt(
    env_id: str, tokenizer: Any, env_kwargs: dict[str, Any] | None = None, seed: int = VAL_SEED
) -> str | None:
    """The system prompt ``env_id`` opens with, after a reset with ``seed`` (None when it has no system message)."""
    import agentgym

    env = agentgym.make(env_id, tokenizer=tokenizer, **(env_kwargs or {}))
    try:
        inner = env.unwrapped_env if isinstance(env, ChatTokenEnv) else None
        if inner is None:
            return None
        messages, _ = inner.reset(seed=seed)
        return str(messages[0]["content"]) if messages and messages[0].get("role") == "system" else None
    finally:
        env.close()


# -- scoring a prompt -----------------------------------------------------------------------------------------------
@dataclass
class PromptScore:
    """How a prompt did on a set of tasks."""

    score: float
    """mean episode return"""
    success_rate: float
    episodes: list[Any] = field(default_factory=list, repr=False)
    """the :class:`~agentgym.rollout.batch.Episode` list"""


class PromptEvaluator:
    """Plays a fixed set of tasks with a given system prompt.

    Args:
        env_id, env_kwargs: the env.
        engine, tokenizer, params: the policy and its sampling parameters.
        num_tasks: tasks per evaluation (env reset seeds ``seed + i``).
        samples_per_task: episodes per task.
        seed: the default first task seed (sampling is seeded from it too).
        max_context_tokens: the context limit of an episode.
        num_threads: step envs in a thread pool of this size.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], engine: Any, tokenizer: Any, params: Any,
                 num_tasks: int, samples_per_task: int = 1, seed: int = VAL_SEED, max_context_tokens: int = 2048,
                 num_threads: int = 0):
        from agentgym.rollout.collector import Collector

        self.seed = seed
        self._wrappers: list[SystemPromptEnv] = []

        def env_fn() -> ChatTokenEnv:
            env = make_prompted_env(env_id, None, tokenizer, max_context_tokens, env_kwargs)
            self._wrappers.append(env.unwrapped_env)
            return env

        self.collector = Collector(env_fn, engine, params, num_groups=num_tasks, group_size=samples_per_task,
                                   num_threads=num_threads)

    def __call__(self, prompt: str | None, seed: int | None = None) -> PromptScore:
        for w in self._wrappers:
            w.system_prompt = prompt
        episodes = self.collector.collect(self.seed if seed is None else seed)
        returns = [ep.total_reward for ep in episodes]
        return PromptScore(sum(returns) / len(returns), sum(ep.success for ep in episodes) / len(episodes), episodes)

    def close(self) -> None:
        self.collector.close()


# -- the search -----------------------------------------------------------------------------------------------------
@dataclass
class APOConfig:
    """An automatic prompt optimization run; every field has a default, so ``APOConfig()`` runs."""

    env: str = "agentgym/GuessNumber-v0"
    """registered env id (a chat env: a MessageEnv)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env, e.g. --env.high 10"""
    algo: str = "apo"
    """apo (automatic prompt optimization)"""
    model: str = "SmolLM2-135M-Instruct"
    """the policy: the embedded default's name, a local HF directory, or a hub id"""
    initial_prompt: str | None = None
    """the prompt to start from (none: the env's own system prompt)"""
    critic: str = ""
    """the critic: empty for the policy model itself, a model name or directory, or an OpenAI-compatible base URL"""
    critic_model: str = ""
    """the model name to ask an OpenAI-compatible critic for (default: --model)"""
    critic_api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the OpenAI-compatible critic's API key"""
    critic_temperature: float = 0.8
    """sampling temperature of the critic's replies"""
    critic_max_new_tokens: int = 128
    """longest critic reply, in tokens"""
    rounds: int = 3
    """rounds of beam search"""
    beam_width: int = 2
    """prompts kept after each round"""
    num_edits: int = 2
    """new prompts the critic proposes per beam member per round"""
    max_failures: int = 3
    """failed episodes shown to the critic per proposal"""
    critique_tasks: int = 8
    """training tasks played per beam member per round to find failures (new seeds every round)"""
    val_tasks: int = 16
    """validation tasks every candidate is scored on (fixed seeds: val_seed + i)"""
    val_samples: int = 2
    """episodes per validation task"""
    val_seed: int = VAL_SEED
    """reset seed of the first validation task"""
    eval_episodes: int = 0
    """after the search, play this many held-out tasks with the initial and the best prompt (0: none)"""
    max_prompt_chars: int = 1000
    """longest prompt taken from a critic reply, in characters"""
    max_seconds: float = 0.0
    """stop scoring new candidates after this many seconds (0: no limit)"""
    max_new_tokens: int = 32
    """tokens the policy may generate per turn"""
    temperature: float = 1.0
    """the policy's sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling threshold (1 disables)"""
    top_k: int = 0
    """top-k sampling (0 disables)"""
    max_context_tokens: int = 2048
    """longest context an episode may reach"""
    env_threads: int = 0
    """step envs in a thread pool of this size (for envs that wait on I/O)"""
    seed: int = 0
    """seeds the training tasks and the critic's sampling"""
    run_dir: str = ""
    """where apo.json, config.json and metrics.jsonl go (default runs/<env>-apo-<time>)"""
    wandb: bool = True
    """log to wandb (mode from WANDB_MODE; offline without credentials)"""
    wandb_project: str = "agentgym"
    """wandb project"""

    def __post_init__(self) -> None:
        for name in ("rounds", "beam_width", "num_edits", "max_failures", "critique_tasks", "val_tasks",
                     "val_samples", "max_prompt_chars", "max_new_tokens"):
            low = 0 if name == "rounds" else 1
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.algo != "apo":
            raise ValueError(f"APOConfig runs algo 'apo', got {self.algo!r}")


@dataclass
class Candidate:
    """A scored prompt of the search."""

    id: int
    """its index in the history"""
    prompt: str | None
    score: float
    """mean validation return"""
    success_rate: float
    """validation success rate"""
    round: int
    """the round that proposed it (0: the initial prompt)"""
    parent: int | None
    """the id of the prompt it was rewritten from"""


@dataclass
class APOResult:
    """The outcome of a search: the best prompt and every candidate's score."""

    best: Candidate
    initial: Candidate
    history: list[Candidate]
    rounds: int
    """rounds completed"""
    wall_s: float
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    """held-out success and reward of the initial and best prompts (when eval_episodes > 0)"""
    run_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "best_prompt": self.best.prompt,
            "best_score": self.best.score,
            "best_success_rate": self.best.success_rate,
            "initial_prompt": self.initial.prompt,
            "initial_score": self.initial.score,
            "initial_success_rate": self.initial.success_rate,
            "rounds": self.rounds,
            "wall_s": self.wall_s,
            "eval": self.eval,
            "history": [dataclasses.asdict(c) for c in self.history],
        }


def _ranked(cands: Sequence[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (-c.score, c.id))  # ties: the earlier candidate


def optimize_prompt(
    cfg: APOConfig, model: Any = None, tokenizer: Any = None, engine: Any = None, critic: Any = None,
) -> APOResult:
    """Beam search over the system prompt of ``cfg.env`` (see the module docstring); writes ``apo.json``.

    Args:
        cfg: the run config.
        model, tokenizer: the policy instead of loading ``cfg.model`` (tests pass tiny ones).
        engine: the policy's engine (default: a :class:`~agentgym.engines.TransformersEngine` over ``model``).
        critic: a :class:`Critic` or a callable ``fn(prompt, failures)``; default from ``cfg.critic``.
    """
    import torch

    from agentgym.engines import SamplingParams, TransformersEngine
    from agentgym.training.tracking import RunLogger

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if model is None and engine is None:
        from agentgym.models import load_model

        model, tokenizer = load_model(cfg.model)
    if tokenizer is None:
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with the model")
    engine = engine if engine is not None else TransformersEngine(model, tokenizer)
    crit = as_critic(critic) if critic is not None else default_critic(cfg, engine, tokenizer)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens)
    env_kwargs = dict(cfg.env_kwargs)
    run_dir = Path(cfg.run_dir or Path("runs") / f"{cfg.env.split('/')[-1]}-apo-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))

    common = dict(env_id=cfg.env, env_kwargs=env_kwargs, engine=engine, tokenizer=tokenizer, params=params,
                  max_context_tokens=cfg.max_context_tokens, num_threads=cfg.env_threads)
    validate = PromptEvaluator(num_tasks=cfg.val_tasks, samples_per_task=cfg.val_samples, seed=cfg.val_seed, **common)
    critique = PromptEvaluator(num_tasks=cfg.critique_tasks, samples_per_task=1, seed=cfg.seed * 1_000_003, **common)
    logger = RunLogger(run_dir, dataclasses.asdict(cfg), use_wandb=cfg.wandb, project=cfg.wandb_project)

    history: list[Candidate] = []
    seen: dict[str | None, Candidate] = {}

    def out_of_time() -> bool:
        return cfg.max_seconds > 0 and time.perf_counter() - t0 > cfg.max_seconds

    def score(prompt: str | None, round_: int, parent: int | None) -> Candidate | None:
        if prompt in seen:
            return None
        s = validate(prompt)
        cand = Candidate(len(history), prompt, s.score, s.success_rate, round_, parent)
        history.append(cand)
        seen[prompt] = cand
        return cand

    try:
        initial_prompt = cfg.initial_prompt
        if initial_prompt is None:
            initial_prompt = env_system_prompt(cfg.env, tokenizer, env_kwargs, seed=cfg.val_seed)
        initial = score(initial_prompt, 0, None)
        assert initial is not None
        beam = [initial]
        rounds_done = 0
        logger.log(_round_metrics(history, beam, [], t0), step=0)
        for r in range(1, cfg.rounds + 1):
            if out_of_time():
                break
            new: list[Candidate] = []
            for parent in beam:
                if out_of_time():
                    break
                played = critique(parent.prompt, seed=cfg.seed * 1_000_003 + r * 7_919 + parent.id * cfg.critique_tasks)
                failed = sorted((ep for ep in played.episodes if not ep.success), key=lambda ep: ep.total_reward)
                if not failed:
                    continue  # nothing to learn from on these tasks
                failures = [transcript(ep) for ep in failed[: cfg.max_failures]]
                critic_seed = cfg.seed * 1_000_003 + r * 101 + parent.id
                proposals = crit.propose(parent.prompt, failures, cfg.num_edits, critic_seed)
                for prompt in proposals[: cfg.num_edits]:
                    if out_of_time():
                        break
                    cand = score(prompt, r, parent.id)
                    if cand is not None:
                        new.append(cand)
            beam = _ranked(beam + new)[: cfg.beam_width]
            rounds_done = r
            logger.log(_round_metrics(history, beam, new, t0), step=r)
        best = _ranked(history)[0]
        evals: dict[str, dict[str, float]] = {}
        if cfg.eval_episodes > 0:
            from agentgym.rollout.evaluation import EVAL_SEED

            held_out = PromptEvaluator(num_tasks=cfg.eval_episodes, samples_per_task=1, seed=EVAL_SEED, **common)
            try:
                for name, cand in (("initial", initial), ("best", best)):
                    s = held_out(cand.prompt)
                    evals[name] = {"success_rate": s.success_rate, "reward_mean": s.score}
            finally:
                held_out.close()
        result = APOResult(best, initial, history, rounds_done, time.perf_counter() - t0, evals, str(run_dir))
        (run_dir / "apo.json").write_text(json.dumps(result.to_json(), indent=2))
        return result
    finally:
        logger.close()
        validate.close()
        critique.close()


def _round_metrics(
    history: list[Candidate], beam: list[Candidate], new: list[Candidate], t0: float
) -> dict[str, float]:
    best = _ranked(history)[0]
    return {
        "best_score": best.score,
        "best_success_rate": best.success_rate,
        "beam_score_mean": sum(c.score for c in beam) / len(beam),
        "new_candidates": float(len(new)),
        "new_score_max": max((c.score for c in new), default=math.nan),
        "candidates": float(len(history)),
        "elapsed_s": time.perf_counter() - t0,
    }


def default_critic(cfg: APOConfig, engine: Any, tokenizer: Any) -> Critic:
    """The critic ``cfg.critic`` names: the policy's own engine, another model, or an OpenAI-compatible URL."""
    if not cfg.critic:
        chat: Any = EngineChat(engine, tokenizer, cfg.critic_temperature, cfg.critic_max_new_tokens)
    elif cfg.critic.startswith(("http://", "https://")):
        chat = OpenAIChat(cfg.critic, cfg.critic_model or cfg.model, os.environ.get(cfg.critic_api_key_env, ""),
                          cfg.critic_temperature, cfg.critic_max_new_tokens)
    else:
        from agentgym.engines import TransformersEngine
        from agentgym.models import load_model

        critic_model, critic_tok = load_model(cfg.critic)
        chat = EngineChat(TransformersEngine(critic_model, critic_tok), critic_tok, cfg.critic_temperature,
                          cfg.critic_max_new_tokens)
    return ChatCritic(chat, cfg.max_prompt_chars)


__all__ = [
    "APOConfig",
    "APOResult",
    "Candidate",
    "PromptEvaluator",
    "PromptScore",
    "default_critic",
    "env_system_prompt",
    "make_prompted_env",
    "optimize_prompt",
]
