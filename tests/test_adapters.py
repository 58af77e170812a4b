"""Two trainable roles as separate LoRA adapters on one base model, trained in one run."""

import pytest
import torch

from agentgym.training.adapters import adapter_parameters, add_adapters, use_adapter
from agentgym.envs.werewolf.agents import HeuristicAgent
from agentgym.envs.werewolf.env import WerewolfEnv
from agentgym.rollout.multi_agent import MultiAgentCollector
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import Trainer
from agentgym.training.train_config import TrainConfig

ADAPTERS = ["wolf", "seer"]


def perturb(model, scale=0.5, seed=0):
    """LoRA starts as a no-op (B = 0); random B matrices make the adapters differ from each other and the base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def make_trainer(tmp_path, trainable=("wolf", "seer"), **overrides):
    from agentgym.engines import SamplingParams

    model, tok = make_tiny_policy(seed=0, max_position_embeddings=8192)
    # PPO: its advantages (return - value) move the weights even when a random policy's games all end alike
    # (invalid replies cost 0.1, the value head starts at 0).
    kwargs = dict(
        env="agentgym/Werewolf-v0", algo="ppo", algo_kwargs={"kl_coef": 0.0}, lora_rank=4, lora_adapters=ADAPTERS,
        iterations=1, groups_per_iteration=1, group_size=4, max_new_tokens=6, lr=1e-2, micro_batch_size=4,
        run_dir=str(tmp_path / "run"), wandb=False, progress=False, export=False, save_episodes=0,
    )
    cfg = TrainConfig(**{**kwargs, **overrides})

    def collector(trainer):
        perturb(trainer.model)
        frozen = trainer.engine_for("wolf")  # answers the doctor, never trained: its seats make no rows
        return MultiAgentCollector(
            lambda: WerewolfEnv(tok, scripted={"villager": HeuristicAgent}, max_days=1, discussion_rounds=1,
                                invalid_action_penalty=0.1, max_context_tokens=6000),
            policies={"wolf": trainer.engine_for("wolf"), "seer": trainer.engine_for("seer"), "frozen": frozen},
            policy_of=lambda env, a: {"werewolf": "wolf", "seer": "seer"}.get(env.roles[a], "frozen"),
            trainable=set(trainable),
            params=SamplingParams(max_new_tokens=cfg.max_new_tokens),
            num_groups=cfg.groups_per_iteration,
            group_size=cfg.group_size,
        )

    return Trainer(cfg, model=model, tokenizer=tok, collector=collector)


def snapshot(model):
    return {name: {n: p.detach().clone() for n, p in adapter_parameters(model, name).items()} for name in ADAPTERS}


def changed(before, model, name):
    return any(not torch.equal(p, before[name][n]) for n, p in adapter_parameters(model, name).items())


def test_adapters_are_separate_and_all_trainable():
    model, tok = make_tiny_policy(seed=0)
    peft_model = add_adapters(model, ADAPTERS, rank=4, alpha=8)
    perturb(peft_model)
    ids = torch.tensor([tok.encode("hello")])
    logits = {}
    for name in ADAPTERS:
        use_adapter(peft_model, name)
        assert all(p.requires_grad for n in ADAPTERS for p in adapter_parameters(peft_model, n).values())
        with torch.no_grad():
            logits[name] = peft_model(ids).logits
    assert not torch.allclose(logits["wolf"], logits["seer"])
    with pytest.raises(ValueError, match="distinct"):
        add_adapters(make_tiny_policy()[0], ["a", "a"], rank=4, alpha=8)


def test_two_roles_train_their_own_adapters_in_one_run(tmp_path):
    trainer = make_trainer(tmp_path)
    before = snapshot(trainer.model)
    episodes = trainer.collect()
    assert {ep.info["policy"] for ep in episodes} == {"wolf", "seer"}  # the frozen doctor made no rows
    trainer.iteration = 0  # the step below collects the same episodes again
    metrics = trainer.step()
    # Every row was scored with the adapter that sampled it: the adapters differ, yet the ratio is 1 at step 0.
    assert metrics["engine_trainer_logprob_diff_max"] < 1e-4
    assert changed(before, trainer.model, "wolf") and changed(before, trainer.model, "seer")
    trainer.close()


def test_only_the_trainable_roles_adapter_moves(tmp_path):
    trainer = make_trainer(tmp_path, trainable=("wolf",))
    before = snapshot(trainer.model)
    metrics = trainer.step()
    assert metrics["engine_trainer_logprob_diff_max"] < 1e-4
    assert changed(before, trainer.model, "wolf") and not changed(before, trainer.model, "seer")
    trainer.close()


def test_checkpoint_and_export_keep_every_adapter(tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tmp_path, export=True)
    trainer.train()
    saved = snapshot(trainer.model)
    resumed = make_trainer(tmp_path / "b", resume=str(tmp_path / "run"))
    for name in ADAPTERS:
        for n, p in adapter_parameters(resumed.model, name).items():
            assert torch.equal(p, saved[name][n]), (name, n)
    ids = torch.tensor([trainer.tokenizer.encode("vote")])
    for name in ADAPTERS:
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model" / name)
        use_adapter(trainer.model, name)
        with torch.no_grad():
            assert torch.allclose(exported(ids).logits, trainer.model(ids).logits, atol=1e-4)
    trainer.close()
    resumed.close()


def test_invalid_settings_are_errors(tmp_path):
    model, tok = make_tiny_policy(seed=0)
    with pytest.raises(ValueError, match="lora_adapters needs lora_rank > 0"):
        Trainer(TrainConfig(lora_adapters=["a"], wandb=False), model=model, tokenizer=tok)
    trainer = make_trainer(tmp_path)
    with pytest.raises(KeyError, match="no adapter 'doctor'"):
        trainer.engine_for("doctor")
    trainer.close()
