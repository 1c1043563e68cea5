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
