import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from agentgym.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_policy():
    from agentgym.tiny import make_tiny_policy

    return make_tiny_policy(seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models gain nothing from intra-op threads, and on a busy machine
    idle-waiting threads slow them down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
