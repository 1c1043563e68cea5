"""oneDNN W8A8: the integer GEMM equals its quantised arithmetic written out in PyTorch, odd shapes included."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bitladder
from bitladder.formats.layout import Layout
from bitladder.kernels import (
    FbgemmW8A8Kernel,
    KernelUnsupported,
    OnednnW8A8Kernel,
    OnednnW8A8TokenKernel,
    reference_linear,
)
from bitladder.kernels.cpu import current
from bitladder.kernels.fbgemm_w8a8 import levels_for
from bitladder.kernels.onednn_w8a8 import _grid
from bitladder.kernels.select import ONEDNN_MIN_ROWS, ONEDNN_MIN_ROWS_BY_VENDOR, choose, onednn_min_rows
from bitladder.methods.quantize.methods import Act
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not OnednnW8A8Kernel.available(), reason="torch has no oneDNN quantized linear")

SHAPES = [(37, 200, 3), (33, 130, 1), (16, 64, 0), (40, 300, 7), (5, 96, 1), (64, 384, 300)]


def _qt(n: int, k: int, layout: Layout = Layout("channel"), seed: int = 0) -> QuantizedTensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return QuantizedTensor.from_float(w, "int8", layout, symmetric=True)


def _x(m: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed))


def _fake(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """What the kernel does to x: quantise to uint8 on (scale, zp), then back."""
    return (torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr().float() - zp) * scale


def _emulate(qt: QuantizedTensor, x: torch.Tensor, bias: torch.Tensor | None, per_token: bool) -> torch.Tensor:
    # the activation grid follows the weight's largest code, as the kernel's does: without VNNI a full 8-bit grid
    # where the codes are small enough (a one-weight layer's code of 34 took the 7-bit one here and missed by 1 %)
    w, levels = qt.dequantize(torch.float32), levels_for(qt.codes(), "onednn")
    if not per_token:
        return F.linear(_fake(x, *_grid(float(x.min()), float(x.max()), levels)), w, bias)
    hi, lo = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    r = torch.maximum(hi, -lo).clamp(min=1e-30)
    xn = x / r
    y = F.linear(_fake(xn, *_grid(float((lo / r).min()), float((hi / r).max()), levels)), w) * r
    return y if bias is None else y + bias


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("kernel", [OnednnW8A8Kernel, OnednnW8A8TokenKernel], ids=["tensor", "token"])
@pytest.mark.parametrize("layout", [Layout("channel"), Layout("tensor")], ids=["channel", "tensor"])
def test_equals_its_quantised_arithmetic_and_tracks_float(kernel, layout):
    for n, k, m in SHAPES:
        qt = _qt(n, k, layout)
        x, bias = _x(m, k), torch.randn(n)
        y = kernel.from_qtensor(qt)(x, bias)
        assert y.shape == (m, n)
        if m == 0:
            continue
        # integer accumulation: only float rounding separates it from the arithmetic written out
        assert _rel(y, _emulate(qt, x, bias, kernel is OnednnW8A8TokenKernel)) < 1e-5
        assert _rel(y, reference_linear(qt, x) + bias) < 2e-2  # 8-bit activations: ~0.5 % off the float layer


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), k=st.integers(1, 300), m=st.integers(1, 40), seed=st.integers(0, 2**16))
@example(n=1, k=1, m=2, seed=19)  # a weight code of 34: a full 8-bit activation grid even without VNNI
def test_token_kernel_property(n, k, m, seed):
    qt = _qt(n, k, seed=seed)
    x = _x(m, k, seed + 1) * torch.logspace(-3, 3, m)[:, None]
    y = OnednnW8A8TokenKernel.from_qtensor(qt)(x)
    # float rounding scales with the terms each output sums, not with the sum: a single output that cancels to
    # 2e-5 from terms of 1e-3 once missed a bound relative to itself (n=1, k=32, m=1, seed=1)
    terms = x.abs() @ qt.dequantize().abs().T
    assert bool(((y - _emulate(qt, x, None, True)).abs() <= 1e-5 * terms).all())


def test_input_scale_is_applied_first():
    qt = _qt(32, 128)
    x, s, bias = _x(9, 128), torch.rand(128) + 0.5, torch.randn(32)
    for kernel in (OnednnW8A8Kernel, OnednnW8A8TokenKernel):
        kern = kernel.from_qtensor(qt)
        assert torch.allclose(kern(x, bias, s), kern(x * s, bias), atol=1e-5)
        assert torch.equal(x, _x(9, 128))  # the caller's tensor is left alone


def test_rejects_weights_it_cannot_run():
    for qt in (QuantizedTensor.from_float(torch.randn(4, 64), "int4", Layout("channel"), symmetric=True),
               QuantizedTensor.from_float(torch.randn(4, 64), "int8", Layout("group", group=32), symmetric=True),
               QuantizedTensor.from_float(torch.randn(4, 64), "uint8", Layout("channel"), symmetric=False)):
        with pytest.raises(KernelUnsupported, match="int8 symmetric"):
            OnednnW8A8Kernel.from_qtensor(qt)


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel", ""])
def test_dynamic_policy_picks_the_backend_by_rows_and_vendor(vendor):
    qt = _qt(8, 64)
    cpu = dataclasses.replace(current(), vendor=vendor)
    at = ONEDNN_MIN_ROWS_BY_VENDOR.get(vendor, ONEDNN_MIN_ROWS)
    assert onednn_min_rows(cpu) == at and (at < ONEDNN_MIN_ROWS) == (vendor == "GenuineIntel")
    assert choose(qt, at - 1, "int8-w8a8-token", cpu=cpu) == f"int8-w8a8-{_few()}-token"
    assert choose(qt, at, "int8-w8a8-token", cpu=cpu) == "int8-w8a8-onednn-token"


def _few() -> str:
    """The W8A8 families' backend below oneDNN's rows: fbgemm where torch has it (not on CPUs without AVX2)."""
    return "fbgemm" if FbgemmW8A8Kernel.available() else "onednn"


def test_dynamic_policy_picks_the_backend_by_rows():
    qt = _qt(8, 64)
    assert choose(qt, onednn_min_rows() - 1, "int8-w8a8-token") == f"int8-w8a8-{_few()}-token"
    assert choose(qt, onednn_min_rows(), "int8-w8a8-token") == "int8-w8a8-onednn-token"
    assert choose(qt, 1, "int8-w8a8") == f"int8-w8a8-{_few()}"
    assert choose(qt, 4096, "int8-w8a8") == "int8-w8a8-onednn"
    assert choose(qt, 4096, "int8-w8a8-fbgemm") == "int8-w8a8-fbgemm"  # a named backend is kept


def test_without_fbgemm_the_families_take_onednn_at_every_size(monkeypatch):
    # torch builds no fbgemm engine for a CPU without AVX2 (an emulated Nehalem): a few rows raised there
    monkeypatch.setattr(FbgemmW8A8Kernel, "installed", classmethod(lambda cls: False))
    qt = _qt(8, 64)
    for policy in ("int8-w8a8", "int8-w8a8-token"):
        assert {choose(qt, m, policy) for m in (2, 31, 4096)} == {policy.replace("w8a8", "w8a8-onednn")}
    layer = torch.nn.Linear(64, 16)
    q = bitladder.quantize(layer, bitladder.Int(8, act=Act(dynamic="tensor")))
    x = torch.randn(3, 64)
    assert float((q(x) - layer(x)).norm() / layer(x).norm()) < 0.03 and q.kernel == "int8-w8a8-onednn"
