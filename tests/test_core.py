import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import agentgym
from agentgym.core import TokenEnv


class CountEnv(TokenEnv):
    """Prompt [1, 2, 3]; every step answers [4]; ends after 3 steps with reward = number of actions tokens."""

    def __init__(self, **kw):
        super().__init__(vocab_size=10, **kw)

    def _reset(self, seed, options):
        self.n = 0
        return np.array([1, 2, 3]), {"hello": 1}

    def _step(self, action):
        self.n += 1
        return np.array([4]), float(len(action)), self.n >= 3, False, {}


def test_episode_and_info():
    env = CountEnv()
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [1, 2, 3] and obs.dtype == np.int64
    assert info["turn"] == 0 and info["context_tokens"] == 3 and info["hello"] == 1
    obs, r, term, trunc, info = env.step(np.array([5, 6]))
    assert obs.tolist() == [4] and r == 2.0 and not term and not trunc
    assert info["turn"] == 1 and info["context_tokens"] == 6
    env.step([7])
    _, _, term, _, _ = env.step([7])
    assert term


def test_check_env_passes():
    check_env(CountEnv(), skip_render_check=True)


def test_context_limit_truncates_with_reason():
    env = CountEnv(max_context_tokens=8)
    env.reset()
    _, _, term, trunc, info = env.step([1, 1])  # 3 + 2 + 1 = 6
    assert not trunc
    obs, r, term, trunc, info = env.step([1, 1, 1])  # 6 + 3 = 9 > 8
    assert trunc and not term and info["truncation_reason"] == "context_length" and obs.size == 0 and r == 0.0
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step([1])


def test_context_full_after_observation_truncates():
    env = CountEnv(max_context_tokens=6)
    env.reset()
    _, _, term, trunc, info = env.step([1, 1])  # 3 + 2 + 1 = 6: no room left for a turn
    assert trunc and info["truncation_reason"] == "context_length"


def test_prompt_longer_than_limit_is_an_error():
    with pytest.raises(ValueError, match="longer than max_context_tokens=2"):
        CountEnv(max_context_tokens=2).reset()


def test_step_before_reset():
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        CountEnv().step([1])


@pytest.mark.parametrize(
    "action, exc, msg",
    [
        ([3, 12, 1, -1], ValueError, r"outside the vocabulary \[0, 10\): 12 at position 1, -1 at position 3"),
        ([[1, 2]], ValueError, r"1-D array.*shape \(1, 2\)"),
        ([1.0, 2.0], TypeError, "integer token ids, got dtype float64"),
        (["a"], TypeError, "integer token ids"),
    ],
)
def test_bad_actions(action, exc, msg):
    env = CountEnv()
    env.reset()
    with pytest.raises(exc, match=msg):
        env.step(action)
    # The episode goes on after a rejected action.
    assert env.step([1])[0].tolist() == [4]


def test_registered_envs_pass_check_env(tiny_tokenizer):
    assert {"agentgym/GuessNumber-v0", "agentgym/Arithmetic-v0"} <= set(agentgym.registry)
    for env_id in agentgym.registry:
        env = agentgym.make(env_id, tokenizer=tiny_tokenizer)
        check_env(env, skip_render_check=True)
