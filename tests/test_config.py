import pytest

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
