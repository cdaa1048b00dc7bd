"""One torch thread for the rl tests: PPO's batches are tiny, and on a busy 2-core
machine a second thread spin-waits (each small matmul got ~100x slower)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
