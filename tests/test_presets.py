"""Named algorithms and AlgoConfig validation."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from agentgym.algos import DESCRIPTIONS, AlgoConfig, get_algorithm, list_algorithms
from agentgym.algos import config as config_module

EXPECTED = {
    # name: (advantage, credit, policy_loss, eps_low, eps_high, loss_agg)
    "ppo": ("gae", "token", "ppo", 0.2, 0.2, "token-mean"),
    "grpo": ("grpo", "trajectory", "ppo", 0.2, 0.2, "seq-mean-token-mean"),
    "dr_grpo": ("dr_grpo", "trajectory", "ppo", 0.2, 0.2, "seq-mean-token-sum-norm"),
    "dapo": ("grpo", "trajectory", "ppo", 0.2, 0.28, "token-mean"),
    "gspo": ("grpo", "trajectory", "gspo", 3e-4, 4e-4, "seq-mean-token-mean"),
    "rloo": ("rloo", "trajectory", "ppo", 0.2, 0.2, "seq-mean-token-sum"),
    "reinforce_pp": ("reinforce_pp", "token", "ppo", 0.2, 0.2, "token-mean"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_algorithms(name):
    cfg = get_algorithm(name)
    got = (cfg.advantage, cfg.credit, cfg.policy_loss, cfg.clip_eps_low, cfg.clip_eps_high, cfg.loss_agg)
    assert got == EXPECTED[name]
    assert cfg.name == name
    assert name in DESCRIPTIONS


def test_algorithm_specific_switches():
    assert get_algorithm("ppo").needs_values and get_algorithm("ppo").group_size == 1
    assert not get_algorithm("grpo").needs_values
    # β = 0 by default (TRL's default; DAPO, Dr. GRPO); DeepSeekMath's 0.04 is an override, with the k3 estimator.
    assert get_algorithm("grpo").kl_coef == 0.0 and get_algorithm("grpo").kl_estimator == "k3"
    assert get_algorithm("grpo", kl_coef=0.04).needs_ref_logprobs
    assert not get_algorithm("grpo").needs_ref_logprobs
    dapo = get_algorithm("dapo")
    assert dapo.dynamic_sampling and dapo.overlong_buffer_frac == 0.2 and dapo.kl_coef == 0.0
    assert get_algorithm("dr_grpo").kl_coef == 0.0
    rpp = get_algorithm("reinforce_pp")
    assert rpp.kl_in_reward and rpp.kl_estimator == "k1"
    assert not get_algorithm("grpo").needs_trainer_logprobs
    assert get_algorithm("grpo", tis_cap=2.0).needs_trainer_logprobs


def test_all_listed_algorithms_build():
    assert set(EXPECTED) <= set(list_algorithms())
    for name in list_algorithms():
        assert isinstance(get_algorithm(name), AlgoConfig)


def test_overrides_apply():
    cfg = get_algorithm("grpo", kl_coef=0.0, group_size=4, max_tokens=256)
    assert (cfg.kl_coef, cfg.group_size, cfg.max_tokens, cfg.loss_agg) == (0.0, 4, 256, "seq-mean-token-mean")


def test_unknown_algorithm_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'grpo'"):
        get_algorithm("grop")
    with pytest.raises(ValueError, match="'dr_grpo'"):
        get_algorithm("drgrpo")


def test_unknown_override_suggests_closest_field():
    with pytest.raises(ValueError, match="'kl_coef'"):
        get_algorithm("grpo", kl_coeff=0.1)
    with pytest.raises(ValueError, match="'clip_eps_high'"):
        get_algorithm("dapo", clip_eps_hi=0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(advantage="gpro"), "'grpo'"),
    (dict(credit="turns"), "'turn'"),
    (dict(loss_agg="token_mean"), "'token-mean'"),
    (dict(policy_loss="gpso"), "'gspo'"),
    (dict(kl_estimator="k4"), "k3"),
    (dict(advantage="gae", credit="turn"), "credit='token'"),
    (dict(dual_clip_c=0.5), "dual_clip_c"),
    (dict(gamma=1.5), "gamma"),
    (dict(clip_eps_low=1.0), "clip"),
    (dict(tis_cap=0.0), "tis_cap"),
    (dict(overlong_buffer_frac=1.0), "overlong_buffer_frac"),
    (dict(group_size=0), "group_size"),
])
def test_invalid_configs_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlgoConfig(**kwargs)


def test_every_config_field_has_a_one_line_docstring():
    tree = ast.parse(inspect.getsource(config_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AlgoConfig")
    documented = set()
    for prev, node in zip(cls.body, cls.body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            assert "\n" not in node.value.value.strip()
            documented.add(prev.target.id)
    assert documented == {f.name for f in dataclasses.fields(AlgoConfig)}


def test_algos_command_lists_every_algorithm_with_its_description(capsys):
    from agentgym.workflow.cli import main
    from agentgym.workflow.train_command import BEYOND_RL

    assert main(["algos"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert set(listed) == set(list_algorithms()) | set(BEYOND_RL)
    for name in list_algorithms():
        assert listed[name] == DESCRIPTIONS[name]


def test_cli_output_into_a_closed_pipe_stops_quietly():
    import subprocess
    import sys

    # As in `agentgym algos | head -1` once head has exited: stdout is a pipe nobody reads, so writes fail with
    # BrokenPipeError. The command stops without a traceback.
    script = ("import os, sys\n"
              "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
              "from agentgym.workflow.cli import main\n"
              "sys.exit(main(['algos']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_each_preset_keeps_its_group_size_unless_the_run_sets_one():
    from agentgym.training.train_config import TrainConfig

    assert TrainConfig(algo="ppo").algo_config().group_size == 1
    assert TrainConfig(algo="reinforce_pp").algo_config().group_size == 1
    assert TrainConfig(algo="grpo").algo_config().group_size == 8
    assert TrainConfig(algo="ppo", group_size=4).algo_config().group_size == 4
    assert TrainConfig(algo="ppo", group_size=4, algo_kwargs={"group_size": 2}).algo_config().group_size == 2
