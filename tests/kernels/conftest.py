import pytest
import torch


@pytest.fixture
def under_threads():
    """``run(n, fn)``: fn() with torch (and so the C kernels) on n threads; the count is restored after the test."""
    before = torch.get_num_threads()

    def run(n, fn):
        torch.set_num_threads(n)
        return fn()

    yield run
    torch.set_num_threads(before)
