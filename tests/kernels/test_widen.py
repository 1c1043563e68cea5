"""Float weights to fp32 whole: the C pass gives torch's ``float(w) * scale`` bit for bit on every path, every fp8
code included, and torch's own cast stands in where the C kernels are not built."""

import numpy as np
import pytest
import torch

from bitladder.kernels import widen
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.widen import CODES, widened

needs_c = pytest.mark.skipif(c_module() is None, reason="C kernels not built (no compiler)")
DTYPES = sorted(CODES, key=str)


def _raw(w: torch.Tensor) -> np.ndarray:
    return w.view(torch.uint8 if w.element_size() == 1 else torch.int16).numpy()


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(3, 1), (5, 17), (64, 300), (300, 260)])  # tails of 16 and 8, threads' split
def test_every_path_gives_torchs_cast_times_the_scale(dtype, n, k):
    torch.manual_seed(0)
    w = (torch.randn(n, k) * 3).to(dtype)
    for scale in (None, torch.rand(n) * 4 + 1e-3):
        want = w.float() if scale is None else w.float() * scale[:, None]
        for simd in (0, 1, 2):  # portable, AVX2, AVX-512 where the host has them
            for threads in (1, 2):
                out = torch.empty(n, k)
                c_module().widen(_raw(w), out.numpy(), n, k, CODES[dtype], b"" if scale is None else scale.numpy(),
                                 simd, threads)
                assert torch.equal(out, want), (simd, threads)
        assert torch.equal(widened(w, scale), want)


@needs_c
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_every_finite_fp8_code(dtype):
    codes = torch.arange(256, dtype=torch.uint8).view(dtype)
    values = codes.float()
    keep = torch.isfinite(values)
    w = codes[keep].reshape(1, -1).contiguous()
    assert torch.equal(widened(w), values[keep].reshape(1, -1))
    assert torch.equal(widened(w, torch.tensor([0.375])), values[keep].reshape(1, -1) * 0.375)


def test_torchs_cast_without_the_c_pass(monkeypatch):
    monkeypatch.setattr(widen, "c_module", lambda: None)
    w, scale = torch.randn(4, 9).to(torch.float8_e5m2), torch.rand(4)
    assert torch.equal(widened(w, scale), w.float() * scale[:, None])


@needs_c
def test_buffers_that_do_not_fit_are_refused():
    w, out = np.zeros((4, 8), np.int16), np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        c_module().widen(w, out, 4, 9, 0, b"", 2, 1)
    with pytest.raises(ValueError, match="do not fit"):
        c_module().widen(w, out, 4, 8, 0, np.ones(3, np.float32), 2, 1)
    with pytest.raises(ValueError, match="do not fit"):
        c_module().widen(w, out, 4, 8, 7, b"", 2, 1)
