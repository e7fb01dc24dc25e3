import os

import pytest
import torch

# Two cores: keep intra-op threads fixed so timings and float reassociation are stable.
torch.set_num_threads(int(os.environ.get("PURSAMERE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny tensor ops: intra-op threads only add spin-waiting there (10-50x
    slower on a busy 2-core machine). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
