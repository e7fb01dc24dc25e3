import os

import pytest
import torch

# Two cores: keep intra-op threads fixed so timings and float reassociation are stable.
torch.set_num_threads(int(os.environ.get("PURSAMERE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
