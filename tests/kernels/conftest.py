import pytest
import torch


@pytest.fixture
def same_bits_on_every_thread_count():
    """``check(cls, qt, x)``: cls's kernel of qt gives its reference's bits on every path (portable, AVX2, the best
    SIMD path; each falls back on a lesser host) on 1, 2 and 3 threads. The thread count is restored after."""
    before = torch.get_num_threads()

    def check(cls, qt, x):
        ref = cls.from_qtensor(qt, simd=0).reference(x)
        for simd in (0, 1, 2):
            kern = cls.from_qtensor(qt, simd=simd)
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                assert torch.equal(kern(x), ref), (simd, threads)

    yield check
    torch.set_num_threads(before)
