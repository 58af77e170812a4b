import threading
import time

import pytest

import agentgym
from agentgym.vector import TokenVectorEnv
from test_core import CountEnv


def test_step_subset_and_waiting():
    venv = TokenVectorEnv([CountEnv for _ in range(3)])
    obs, infos = venv.reset(seed=0)
    assert [o.tolist() for o in obs] == [[1, 2, 3]] * 3
    out = venv.step({0: [1], 2: [1, 1]})
    assert set(out) == {0, 2} and out[2].reward == 2.0
    assert venv.envs[1].turn == 0 and venv.envs[0].turn == 1
    for _ in range(2):
        out = venv.step({0: [1]})
    assert out[0].terminated and venv.waiting == [1, 2]


def test_autoreset_returns_new_prompt():
    venv = TokenVectorEnv([CountEnv, CountEnv], autoreset=True)
    venv.reset()
    for _ in range(3):
        out = venv.step([[1], [1]])
    assert out[0].done and out[0].reset_obs.tolist() == [1, 2, 3] and out[0].reset_info["turn"] == 0
    assert venv.envs[0].turn == 0 and venv.waiting == [0, 1]


class SlowEnv(CountEnv):
    threads: set = set()

    def _step(self, action):
        SlowEnv.threads.add(threading.get_ident())
        time.sleep(0.2)
        return super()._step(action)


def test_thread_pool_overlaps_io_bound_steps():
    venv = TokenVectorEnv([SlowEnv for _ in range(4)], num_threads=4)
    venv.reset()
    t0 = time.perf_counter()
    venv.step([[1]] * 4)
    # Four 0.2 s sleeps ran in four threads at once.
    assert len(SlowEnv.threads) == 4
    assert time.perf_counter() - t0 < 0.6
    venv.close()


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        TokenVectorEnv([])
    venv = TokenVectorEnv([CountEnv])
    venv.reset()
    with pytest.raises(IndexError, match="out of range"):
        venv.step({3: [1]})
    with pytest.raises(ValueError, match="pass a dict to step a subset"):
        venv.step([[1], [1]])


def test_make_vec_seeds_each_env(tiny_tokenizer):
    venv = agentgym.make_vec("agentgym/GuessNumber-v0", 3, tokenizer=tiny_tokenizer)
    _, infos = venv.reset(seed=10)
    _, again = venv.reset(seed=10)
    assert [i["secret"] for i in infos] == [i["secret"] for i in again]
    assert len({i["secret"] for i in infos}) > 1
    with pytest.raises(ValueError, match="num_envs"):
        agentgym.make_vec("agentgym/GuessNumber-v0", 0)
