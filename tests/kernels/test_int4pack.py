"""torch's packed-int4 GEMM: group-scaled codes of 4 bits or fewer, bf16 activations, odd shapes included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitladder.formats.layout import Layout
from bitladder.kernels import Int4PackBf16Kernel, KernelUnsupported, reference_linear
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not Int4PackBf16Kernel.available(), reason="no packed-int4 GEMM with bf16 dots here")

QNAMES = ["int4", "uint4", "int3", "uint3", "int2", "uint2"]
SHAPES = [(16, 64, 1), (48, 192, 7), (32, 256, 0), (64, 512, 33)]  # (N, K, M): M = 0 is an empty batch


def _qt(qname: str, n: int, k: int, group: int = 64) -> QuantizedTensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k))
    return QuantizedTensor.from_float(w, qname, Layout("group", group=group), symmetric=not qname.startswith("u"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("qname", QNAMES)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_matches_the_dequantised_layer_within_bf16_rounding(qname, group):
    for n, k, m in SHAPES:
        if k % group:
            continue
        qt = _qt(qname, n, k, group)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
        y = Int4PackBf16Kernel.from_qtensor(qt)(x)
        assert y.shape == (m, n) and y.dtype == torch.float32
        if m:
            ref = reference_linear(qt, x)
            # bf16 activations, scales and offsets: ~0.3 %, an order below 8-bit activation rounding
            assert _rel(y, ref) < 6e-3
            # and the rounding is the activation's: the same layer on bf16-rounded inputs is closer still
            assert _rel(y, F.linear(x.bfloat16().float(), qt.dequantize(torch.float32))) < 4e-3


def test_stores_four_bits_per_weight():
    qt = _qt("int4", 64, 512)
    kern = Int4PackBf16Kernel.from_qtensor(qt)
    assert kern.nbytes == 64 * 512 // 2 + 64 * (512 // 64) * 4  # codes + a bf16 (scale, offset) per group


@pytest.mark.parametrize("qt", [
    QuantizedTensor.from_float(torch.randn(40, 128), "int4", Layout("group", group=64)),  # N not a multiple of 16
    QuantizedTensor.from_float(torch.randn(32, 96), "int4", Layout("group", group=64)),  # K not a multiple of 64
    QuantizedTensor.from_float(torch.randn(32, 128), "int4", Layout("group", group=16)),  # group below 32
    QuantizedTensor.from_float(torch.randn(32, 128), "int4", Layout("channel")),  # no groups: fp16 codes do it
    QuantizedTensor.from_float(torch.randn(32, 128), "int8", Layout("group", group=64)),  # 8 bits
    QuantizedTensor.from_float(torch.randn(32, 128), "fp8_e4m3", Layout("group", group=64)),
], ids=["n40", "k96", "g16", "channel", "int8", "fp8"])
def test_refuses_what_it_cannot_pack(qt):
    assert not Int4PackBf16Kernel.applies(qt)
    with pytest.raises(KernelUnsupported, match="packed-int4 GEMM needs"):
        Int4PackBf16Kernel.from_qtensor(qt)
