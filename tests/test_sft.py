"""SFT on trajectories: the loss by hand, the loss mask, selection, trajectory files, and learning by rejection
sampling."""

import json

import pytest
import torch
from tensordict import TensorDict

from agentgym.algos import get_algorithm, loss_normalizer
from agentgym.algos.config import AlgoConfig
from agentgym.algos.sft import SelectionConfig, select_episodes, selection_mask, sft_loss
from agentgym.rollout.batch import Episode, Turn, to_batch
from agentgym.training.policy import forward
from agentgym.training.sft import SFTConfig, SFTTrainer, episode_from_messages, load_trajectories
from agentgym.tiny import make_tiny_policy
from agentgym.training.trainer import episode_record

ENV = {"low": 1, "high": 3, "max_turns": 2, "system_prompt": None}


def _batch(logprob_rows, mask_rows):
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    return torch.tensor(logprob_rows, dtype=torch.float32), TensorDict({"loss_mask": mask}, batch_size=[len(mask)])


def test_sft_loss_is_the_mean_negative_logprob_of_policy_tokens():
    logprobs, batch = _batch([[0.0, -1.0, -2.0, -9.0], [0.0, -0.5, -7.0, -3.0]],
                             [[False, True, True, False], [False, True, False, True]])
    norm = loss_normalizer(batch, AlgoConfig(loss_agg="token-mean"))
    loss, metrics = sft_loss(logprobs, batch, norm, "token-mean")
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5 + 3.0) / 4)
    assert metrics["sft/nll"] == pytest.approx(6.5 / 4) and metrics["sft/tokens"] == 4
    # seq-mean-token-mean: each row's mean, then the mean over rows.
    norm = loss_normalizer(batch, AlgoConfig(loss_agg="seq-mean-token-mean"))
    loss, _ = sft_loss(logprobs, batch, norm, "seq-mean-token-mean")
    assert loss.item() == pytest.approx(((1.0 + 2.0) / 2 + (0.5 + 3.0) / 2) / 2)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_sft_loss_sums_over_micro_batches_to_the_minibatch_loss(agg):
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.4
    mask[:, 0] = False
    batch = TensorDict({"loss_mask": mask}, batch_size=[6])
    norm = loss_normalizer(batch, AlgoConfig(loss_agg=agg))
    whole, _ = sft_loss(logprobs, batch, norm, agg)
    parts = sum(sft_loss(logprobs[i : i + 2], batch[i : i + 2], norm, agg)[0] for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def _two_turn_episode():
    # turn 0: prompt [5, 6, 7], action [8, 9]; env appends obs [10, 11]; turn 1: action [12].
    return Episode([Turn([5, 6, 7], [8, 9], [-0.1, -0.2], 0.0), Turn([5, 6, 7, 8, 9, 10, 11], [12], [-0.3], 1.0)],
                   group_id=0, episode_id=0, terminated=True, info={"success": True})


def test_observation_tokens_never_contribute_to_the_sft_loss():
    model, _ = make_tiny_policy(seed=0)
    batch, _ = to_batch([_two_turn_episode()])
    assert batch["loss_mask"][0].tolist() == [False, False, False, True, True, False, False, True]
    norm = loss_normalizer(batch, AlgoConfig())
    out = forward(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    logprobs = out.logprobs.detach().requires_grad_(True)
    loss, _ = sft_loss(logprobs, batch, norm)
    loss.backward()
    assert (logprobs.grad[~batch["loss_mask"]] == 0).all()
    assert (logprobs.grad[batch["loss_mask"]] != 0).all()
    # Whatever the values off the mask (even inf or nan), the loss is the same.
    garbage = logprobs.detach().clone()
    garbage[~batch["loss_mask"]] = float("nan")
    garbage[0, 0] = float("-inf")
    assert sft_loss(garbage, batch, norm)[0].item() == pytest.approx(loss.item())
    # And it is exactly the mean NLL of the three policy tokens under the model.
    ids = batch["input_ids"][0]
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()
    nll = [-torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in (3, 4, 7)]
    assert loss.item() == pytest.approx(sum(nll) / 3, rel=1e-4)


def test_selection_threshold_top_fraction_and_groups():
    returns = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.2, 0.9])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    keep = selection_mask(returns, groups, SelectionConfig(success_only=False, min_reward=0.5))
    assert keep.tolist() == [True, False, True, True, False, True]
    # Top half over everything: the 3 best (the tie between episodes 0 and 3 keeps both, 0.9 is third).
    keep = selection_mask(returns, groups, SelectionConfig(success_only=False, top_frac=0.5))
    assert keep.tolist() == [True, False, False, True, False, True]
    # Top third per group: the best of each group.
    keep = selection_mask(returns, groups, SelectionConfig(success_only=False, top_frac=1 / 3, per_group=True))
    assert keep.tolist() == [True, False, False, True, False, False]
    # Success only, with the env's success flags.
    success = torch.tensor([True, False, False, True, False, False])
    keep = selection_mask(returns, groups, SelectionConfig(), success)
    assert keep.tolist() == [True, False, False, True, False, False]
    # Without flags, success is a positive return; ties keep the earlier episode.
    keep = selection_mask(torch.tensor([0.0, 1.0, 1.0]), torch.zeros(3, dtype=torch.long),
                          SelectionConfig(top_frac=0.3))
    assert keep.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="top_frac"):
        SelectionConfig(top_frac=0.0)


def test_select_episodes_keeps_order():
    eps = [Episode([Turn([1], [2], [0.0], r)], group_id=0, episode_id=i, info={"success": r > 0.5})
           for i, r in enumerate([0.0, 1.0, 0.7, 1.0])]
    assert [ep.episode_id for ep in select_episodes(eps, SelectionConfig())] == [1, 2, 3]
    assert [ep.episode_id for ep in select_episodes(eps, SelectionConfig(min_reward=0.8))] == [1, 3]


def test_episode_records_round_trip(tmp_path, tiny_tokenizer):
    ep = _two_turn_episode()
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(episode_record(ep, 1)) + "\n\n")
    (loaded,) = load_trajectories(path, tiny_tokenizer)
    assert [(t.prompt_ids, t.action_ids, t.logprobs, t.reward) for t in loaded.turns] == [
        (t.prompt_ids, t.action_ids, t.logprobs, t.reward) for t in ep.turns]
    assert loaded.success and loaded.total_reward == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": [{"prompt_ids": [1], "action_ids": [99999]}]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: .*outside the tokenizer's vocabulary"):
        load_trajectories(bad, tiny_tokenizer)
    bad.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: .*'turns'.*'messages'"):
        load_trajectories(bad, tiny_tokenizer)


def test_messages_are_tokenized_through_the_chat_template(tiny_tokenizer):
    from agentgym.chat import ChatTemplate

    messages = [{"role": "system", "content": "Guess."}, {"role": "user", "content": "1-3?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "Higher."},
                {"role": "assistant", "content": "3"}]
    ep = episode_from_messages(messages, tiny_tokenizer, reward=1.0)
    chat = ChatTemplate(tiny_tokenizer)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(ep.turns) == 2 and ep.success and ep.total_reward == 1.0
    assert ep.turns[0].prompt_ids == chat.prompt_ids(messages[:2])
    assert ep.turns[0].action_ids == tiny_tokenizer.encode("2", add_special_tokens=False) + [end]
    assert ep.turns[1].prompt_ids == chat.prompt_ids(messages[:4])
    # One row; the loss mask is exactly the assistants' content and end-of-turn tokens.
    batch, _ = to_batch([ep])
    ids, mask = batch["input_ids"][0], batch["loss_mask"][0]
    assert tiny_tokenizer.decode(ids[mask]) == "2<|im_end|>3<|im_end|>"
    whole = chat.encode(chat.render(messages, add_generation_prompt=False))
    assert ids[batch["attention_mask"][0]].tolist() == whole[: int(batch["attention_mask"][0].sum())]
    with pytest.raises(ValueError, match="no assistant message"):
        episode_from_messages(messages[:2], tiny_tokenizer)


def _sft_trainer(tmp_path, **overrides):
    torch.manual_seed(0)
    model, tok = make_tiny_policy(seed=0)
    settings = dict(env="agentgym/GuessNumber-v0", env_kwargs=ENV, groups_per_iteration=8, group_size=8,
                    max_new_tokens=1, lr=1e-2, epochs=4, micro_batch_size=64, run_dir=str(tmp_path / "sft"),
                    wandb=False, progress=False, export=False)
    cfg = SFTConfig(**{**settings, **overrides})
    return SFTTrainer(cfg, model=model, tokenizer=tok)


def test_sft_config_rejects_rl_overrides():
    with pytest.raises(ValueError, match="loss_agg"):
        SFTConfig(algo_kwargs={"kl_coef": 0.1}).algo_config()
    assert SFTConfig(algo_kwargs={"loss_agg": "seq-mean-token-mean"}).algo_config().loss_agg == "seq-mean-token-mean"
    assert get_algorithm("grpo").loss_agg  # the RL presets are untouched


@pytest.mark.slow
def test_rejection_sampling_raises_success(tmp_path):
    trainer = _sft_trainer(tmp_path, iterations=8, groups_per_iteration=16, epochs=2)
    before = trainer.evaluate(128, temperature=1.0).success_rate
    history = trainer.train()
    after = trainer.evaluate(128, temperature=1.0).success_rate
    trainer.close()
    assert all(h["kept_episodes"] == h["success_rate"] * h["episodes"] for h in history)
    assert before <= 0.1
    assert after >= 0.3, [round(h["success_rate"], 2) for h in history]
    lines = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "sft/nll" in json.loads(lines[-1])


def test_sft_from_a_file_of_messages(tmp_path):
    from agentgym.chat import ChatTemplate
    from agentgym.engines import SamplingParams

    # Demonstrations that always open with 2: the policy learns to open with 2.
    demo = [{"role": "user", "content": "I am thinking of an integer between 1 and 3. Guess it."},
            {"role": "assistant", "content": "2"}]
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(json.dumps({"messages": demo}) for _ in range(4)) + "\n")
    trainer = _sft_trainer(tmp_path, data=str(path), iterations=2, epochs=5, batch_size=2, eval_episodes=4)
    history = trainer.train()
    assert history[-1]["kept_episodes"] == 4 and history[-1]["sft/steps"] == 10
    assert history[-1]["sft/nll"] < min(0.2, history[0]["sft/nll"])
    assert history[-1]["eval_success_rate"] == history[-1]["success_rate"]
    prompt = ChatTemplate(trainer.tokenizer).prompt_ids(demo[:1])
    (samples,) = trainer.engine.generate([prompt], SamplingParams(n=16, max_new_tokens=1, seed=0))
    trainer.close()
    assert sum(trainer.tokenizer.decode(c.token_ids) == "2" for c in samples) >= 14


def test_sft_micro_batches_within_the_activation_budget_give_the_same_gradients(tmp_path):
    # Demonstrations of different lengths: a long answer among short ones.
    lines = []
    for i, answer in enumerate(["2", "1", "3 " * 40, "2", "1 3", "3"]):
        demo = [{"role": "user", "content": f"Guess {i}."}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": demo}))
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(lines) + "\n")

    def first_step(name, **overrides):
        trainer = _sft_trainer(tmp_path / name, data=str(path), iterations=1, epochs=1, batch_size=6, **overrides)
        grads, real, decide = [], trainer.optimizer.step, trainer._checkpointing
        trainer.checkpointed = []

        def step(*args, **kwargs):
            grads.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
            return real(*args, **kwargs)

        def checkpointing(micro):
            decide(micro)
            trainer.checkpointed.append((micro.batch_size[0], trainer._checkpointing_on))

        trainer.optimizer.step, trainer._checkpointing = step, checkpointing
        trainer.train()
        trainer.close()
        return trainer, grads[0]

    _, ref = first_step("one", micro_batch_size=64, activation_checkpointing="off")
    budget, budget_grads = first_step("budget", micro_batch_size=64, activation_memory_mb=1)
    # The 1 MiB budget splits the rows and checkpoints the long one; the gradients do not change.
    assert len(budget.checkpointed) > 1 and any(on for _, on in budget.checkpointed)
    assert budget._micro_tokens < budget._max_micro_tokens
    assert not any(on for _, on in first_step("off", micro_batch_size=64, activation_checkpointing="off")[0].checkpointed)
    assert sum(float(g.norm()) for g in ref) > 0
    for name, grads in {"budget": budget_grads, "row by row": first_step("rows", micro_batch_size=1)[1]}.items():
        for g, r in zip(grads, ref):
            assert torch.allclose(g, r, rtol=1e-4, atol=1e-7), (name, float((g - r).abs().max()))


def test_sft_refuses_several_adapters(tmp_path):
    with pytest.raises(ValueError, match="SFT trains one policy"):
        _sft_trainer(tmp_path, lora_rank=4, lora_adapters=["seer", "doctor"])


def test_cli_trains_sft_from_the_run_dir_episodes(tmp_path):
    from agentgym.workflow.cli import main

    # A trainer-written episodes.jsonl (from an SFT rejection-sampling run) is valid SFT data.
    src = tmp_path / "first"
    common = ["--model", "tiny", "--env", "agentgym/GuessNumber-v0", "--env.low", "1", "--env.high", "3", "--env.max_turns", "2",
              "--env.system_prompt", "null", "--max_new_tokens", "1", "--groups_per_iteration", "4",
              "--group_size", "4", "--lr", "1e-2", "--wandb", "false", "--progress", "false", "--export", "false"]
    assert main(["train", "--algo", "sft", "--iterations", "1", "--save_episodes", "16", "--run_dir", str(src),
                 *common]) == 0
    episodes = load_trajectories(src / "episodes.jsonl")
    assert len(episodes) == 16
    out = tmp_path / "second"
    assert main(["train", "--algo=sft", "--data", str(src / "episodes.jsonl"), "--success_only", "false",
                 "--iterations", "2", "--run_dir", str(out), *common]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--algo", "sft", "--algo.kl_coef", "0.1", *common]) == 2
