import pytest

import agentgym

from agentgym.workflow.config import help_text, parse_cli
from agentgym.training.train_config import CLI_ALIASES, TrainConfig


def test_overrides_types_and_aliases(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("algo: ppo\nlr: 0.001\nenv:\n  high: 20\n")
    cfg = parse_cli(
        TrainConfig,
        ["--config", str(yml), "--iterations", "3", "--env.max_turns", "4", "--algo.kl_coef=1e-3", "--wandb", "false"],
        CLI_ALIASES,
    )
    assert cfg.algo == "ppo" and cfg.lr == 0.001 and cfg.iterations == 3 and cfg.wandb is False
    assert cfg.env_kwargs == {"high": 20, "max_turns": 4}
    assert cfg.algo_kwargs == {"kl_coef": 0.001}
    assert cfg.algo_config().kl_coef == 0.001


def test_typo_suggests_key():
    with pytest.raises(KeyError, match="Did you mean --lr"):
        parse_cli(TrainConfig, ["--lrr", "1"], CLI_ALIASES)
    with pytest.raises(ValueError, match="--iterations: cannot read 'x' as int"):
        parse_cli(TrainConfig, ["--iterations", "x"], CLI_ALIASES)


def test_help_lists_every_field_with_default():
    text = help_text(TrainConfig, CLI_ALIASES)
    assert "--lr  [default: 1e-05]" in text and "AdamW learning rate" in text
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in text


def test_env_arguments_are_checked_before_a_model_loads(capsys):
    from agentgym.workflow.cli import main

    # The default env (Addition) has no range: `--env.high` belongs to GuessNumber. A typo gets the closest names.
    assert main(["train", "--env.high", "10"]) == 2
    err = capsys.readouterr().err
    assert "agentgym/Addition-v0 takes no argument 'high'; it takes: allow_tool, answer_format" in err
    assert main(["train", "--env.max_turn", "3"]) == 2
    assert "takes no argument 'max_turn' (did you mean 'max_turns'" in capsys.readouterr().err
    assert main(["train", "--env", "agentgym/Adition-v0"]) == 2
    assert "Did you mean 'agentgym/Addition-v0'" in capsys.readouterr().err
    TrainConfig(env="agentgym/GuessNumber-v0", env_kwargs={"high": 10}).check()  # where it belongs, it passes


def test_every_command_takes_both_spellings_of_an_option():
    from agentgym.workflow.evaluate import build_parser

    # train's options are its fields (snake case); the kebab-case spelling is the same option
    assert parse_cli(TrainConfig, ["--max-new-tokens", "7", "--env.max-turns=3"], CLI_ALIASES) == parse_cli(
        TrainConfig, ["--max_new_tokens", "7", "--env.max_turns=3"], CLI_ALIASES)
    # the argparse commands' options are kebab case; the snake-case spelling is the same option
    p = build_parser()
    snake = p.parse_args(["--max_new_tokens", "9", "--top_k=5", "--model", "m_dir"])
    assert snake == p.parse_args(["--max-new-tokens", "9", "--top-k=5", "--model", "m_dir"])
    assert snake.max_new_tokens == 9 and snake.top_k == 5 and snake.model == "m_dir"  # values are left alone
    assert p.kebab_case(["--top_k", "5", "--", "--max_new_tokens"]) == ["--top-k", "5", "--", "--max_new_tokens"]
    with pytest.raises(SystemExit):  # a name that is no option in either spelling is still an error
        p.parse_args(["--max_new_tokenz", "9"])
    # eval's env arguments, as train's
    from agentgym.workflow.evaluate import _split_env_kwargs

    rest, kwargs = _split_env_kwargs(["--env.max-turns", "3", "--env-kwargs.high=7", "--env_kwargs.low", "2", "--seed", "1"])
    assert kwargs == {"max_turns": 3, "high": 7, "low": 2} and rest == ["--seed", "1"]


def test_a_trainer_with_its_own_collector_needs_no_registered_env(tmp_path):
    from agentgym.rollout.collector import Collector
    from agentgym.tiny import make_tiny_policy
    from agentgym.training.trainer import Trainer

    cfg = TrainConfig(env="mine/NotRegistered-v0", env_kwargs={"anything": 1}, iterations=1, groups_per_iteration=1,
                      group_size=2, max_new_tokens=2, run_dir=str(tmp_path), wandb=False, progress=False,
                      export=False, eval_episodes=0)
    with pytest.raises(KeyError, match="no environment registered as 'mine/NotRegistered-v0'"):
        cfg.check()
    cfg.check(env=False)
    model, tok = make_tiny_policy()

    def collector(trainer):
        return Collector(lambda: agentgym.make("agentgym/GuessNumber-v0", tokenizer=tok, system_prompt=None),
                         trainer.engine, trainer.params, num_groups=1, group_size=2)

    trainer = Trainer(cfg, model=model, tokenizer=tok, collector=collector)
    try:
        assert trainer.train()[0]["episodes"] == 2
    finally:
        trainer.close()
