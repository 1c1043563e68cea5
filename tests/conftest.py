import os

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests draw the same examples on every run and machine (a test's own @settings adds its counts): a CI
# verdict never depends on the draw. `pytest --hypothesis-profile=explore` searches new examples, and replays the
# failures it saved.
settings.register_profile("reproducible", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile("reproducible")


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
