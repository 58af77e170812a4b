"""docs/architecture.md is the map: its files exist, every module is on it, and its table "to add one thing" works.

One of each is added here by that table alone (an env, an algorithm, an engine, an agent written with the plain
openai client) and trained with.
"""

import re
from pathlib import Path

import pytest
import torch

import agentgym
from agentgym import algos
from agentgym.agents.env import AgentEnv
from agentgym.engines import TransformersEngine, register_engine
from agentgym.engines.registry import ENGINES
from agentgym.message_env import MessageEnv
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def test_the_map_names_files_that_exist_and_every_module():
    text = DOC.read_text()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", text))
    assert len(named) > 30
    missing = [n for n in named if not ((ROOT / n).exists() or (ROOT / "agentgym" / n).exists())]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
    modules = [p.relative_to(ROOT / "agentgym").as_posix() for p in (ROOT / "agentgym").rglob("*.py")
               if p.name != "__init__.py"]
    unlisted = [m for m in modules if m not in named]
    assert not unlisted, f"modules missing from docs/architecture.md: {unlisted}"


# -- one of each, as the table says ---------------------------------------------------------------------------------
class EvenReplyEnv(MessageEnv):
    """Say anything: a reply of an even number of characters earns 1."""

    def __init__(self, word: str = "hi", max_turns: int = 1):
        self.word, self.max_turns = word, max_turns

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return [{"role": "user", "content": f"Say {self.word}."}], {}

    def step(self, text):
        reward = float(len(text) % 2 == 0)
        return [], reward, True, False, {"success": reward == 1.0}


SIGN_CALLS: list[torch.Tensor] = []


def sign_advantage(batch, cfg, episodes):
    """The sign of the episode's return minus its group's mean, at every policy token."""
    returns = algos.credit_returns(batch, cfg, episodes)
    centred = returns.tokens - episodes.to_rows(episodes.group_mean(returns.episode))[:, None]
    advantages = torch.where(batch["loss_mask"].bool(), torch.sign(centred), 0.0)
    SIGN_CALLS.append(advantages)
    return advantages, None


class CountingEngine(TransformersEngine):
    """The in-process engine, counting the contexts it is asked to continue."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.prompts = 0

    def generate(self, prompts, params=None, cache_keys=None):
        self.prompts += len(prompts)
        return super().generate(prompts, params, cache_keys=cache_keys)


def even_agent(task, llm):
    """An agent as the openai SDK writes one: one question, rewarded by the reply."""
    from openai import OpenAI

    client = OpenAI(base_url=llm.base_url, api_key="none", max_retries=0)
    reply = client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": task}],
                                           max_tokens=6)
    return float(len(reply.choices[0].message.content or "") % 2 == 0)


@pytest.fixture
def added():
    """Register the toy env, agent env, algorithm and engine; remove them afterwards."""
    agentgym.register("test/EvenReply-v0", EvenReplyEnv, word="hello")
    agentgym.register("test/EvenAgent-v0", lambda tokenizer, max_context_tokens=4096, engine=None: AgentEnv(
        even_agent, ["Say hi.", "Say bye."], tokenizer, engine=engine, max_context_tokens=max_context_tokens,
        timeout_s=30))
    algos.register_advantage("test_sign")(sign_advantage)
    algos.register_algorithm("test_sign_pg", "sign of the group-centred return", advantage="test_sign",
                             credit="trajectory", group_size=4, policy_loss="ppo", loss_agg="token-mean")
    register_engine("test_counting", lambda model, tokenizer, seed=0: CountingEngine(model, tokenizer),
                    shares_module=True)
    SIGN_CALLS.clear()
    yield
    for name in ("test/EvenReply-v0", "test/EvenAgent-v0"):
        agentgym.registry.pop(name, None)
    algos.ADVANTAGE_ESTIMATORS.pop("test_sign", None)
    algos.ALGORITHMS.pop("test_sign_pg", None)
    algos.DESCRIPTIONS.pop("test_sign_pg", None)
    ENGINES.pop("test_counting", None)


def _train(tmp_path, **kwargs):
    model, tok = make_tiny_policy(seed=3)
    cfg = TrainConfig(iterations=2, groups_per_iteration=2, max_new_tokens=6, lr=1e-3, run_dir=str(tmp_path),
                      wandb=False, progress=False, export=False, eval_episodes=0, save_episodes=0,
                      micro_batch_size=4, **kwargs)
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    try:
        return trainer, trainer.train()
    finally:
        trainer.close()


def test_a_new_env_algorithm_and_engine_train_by_name(tmp_path, added):
    trainer, history = _train(tmp_path, env="test/EvenReply-v0", algo="test_sign_pg", engine="test_counting")
    assert isinstance(trainer.engine, CountingEngine)
    assert trainer.engine.prompts == 2 * 2 * 4  # iterations x tasks x the preset's own group size
    assert trainer.algo.group_size == 4 and trainer.algo.advantage == "test_sign"
    assert trainer.algo.max_tokens == 6  # one turn of max_new_tokens (the env's declared max_turns)
    assert len(SIGN_CALLS) == 2 and all(set(a.unique().tolist()) <= {-1.0, 0.0, 1.0} for a in SIGN_CALLS)
    assert len(history) == 2 and history[0]["engine_trainer_logprob_diff_max"] < 1e-4
    assert all(0.0 <= h["reward_mean"] <= 1.0 for h in history)


def test_an_agent_written_for_the_openai_sdk_trains_as_an_env(tmp_path, added):
    trainer, history = _train(tmp_path, env="test/EvenAgent-v0", algo="grpo", group_size=2, env_threads=4,
                              engine="test_counting")
    assert trainer.engine.prompts == 2 * 2 * 2  # one call per episode, each sampled by the registered engine
    assert len(history) == 2 and all(h["episodes"] == 4 for h in history)  # no episode failed
    assert history[0]["engine_trainer_logprob_diff_max"] < 1e-4


def test_registering_checks_what_it_registers(added):
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        algos.register_algorithm("broken", "no such estimator", advantage="nope")
    assert "broken" not in algos.ALGORITHMS
    with pytest.raises(ValueError, match="AlgoConfig field"):
        algos.register_algorithm("broken", "no such field", advantag="grpo")
    with pytest.raises(ValueError, match="engine must be one of .*test_counting"):
        TrainConfig(engine="test_countin").check()
    TrainConfig(engine="test_counting", algo="test_sign_pg").check()
