import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits_spec():
    from bitladder.zoo import digits

    return digits.spec()


@pytest.fixture(scope="session")
def minilm_spec():
    from bitladder.zoo import minilm

    return minilm.spec()


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test draws the same random numbers on every run and under any xdist split."""
    import zlib

    import torch

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
