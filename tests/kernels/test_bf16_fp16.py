"""bf16 weights on fbgemm's fp16 GEMM: each row's power of two keeps every value exact (or the row is computed
apart), so one-hot activations read every weight back exactly and the layer matches the float one."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.kernels import Bf16Fp16Kernel, KernelUnsupported
from bitladder.kernels.bf16_fp32 import fp16_shifts
from bitladder.tensor.quantized import QuantizedTensor

needs_fbgemm = pytest.mark.skipif(not Bf16Fp16Kernel.installed(), reason="torch without fbgemm's fp16 GEMM")


def _bf16(w: torch.Tensor) -> QuantizedTensor:
    return QuantizedTensor.from_float(w, "bf16", sparse=False)


def _lowest_bit(v: torch.Tensor) -> torch.Tensor:
    """log2 of each bf16 value's lowest set bit, from its bits."""
    bits = v.view(torch.int16).int() & 0x7FFF
    exp, man = bits >> 7, bits & 0x7F
    normal = exp > 0
    e = torch.where(normal, exp - 127, torch.full_like(exp, -126))  # subnormals: 2^-126 x 0.mmmmmmm
    m = torch.where(normal, man | 0x80, man)
    tz = torch.zeros_like(m)
    for b in range(8):  # trailing zeros of the significand (8 bits)
        tz += ((m >> b) & 1 == 0) & (tz == b)
    return e - 7 + tz


@settings(max_examples=60, deadline=None)
@given(exps=st.lists(st.integers(-133, 127), min_size=1, max_size=12),
       mans=st.lists(st.integers(0, 127), min_size=12, max_size=12), neg=st.booleans())
def test_a_row_is_exact_in_fp16_exactly_when_every_lowest_bit_lands_at_2_to_the_minus_24_or_above(exps, mans, neg):
    """The shift moves the row's largest value into [2^15, 2^16) (as far as a normal float's power of two goes);
    a value is exact after it iff its lowest bit lands at 2^-24 or above and the largest below 2^16."""
    vals = torch.tensor([(1 + m / 128) * 2.0 ** e for e, m in zip(exps, mans)], dtype=torch.float64)
    row = (-vals if neg else vals).to(torch.bfloat16).reshape(1, -1)
    row = row[:, row[0].float() != 0]
    if row.numel() == 0:
        return
    shifts, ok = fp16_shifts(row)
    top, s = int(torch.frexp(row.float().abs().amax())[1]) - 1, int(shifts[0])  # the largest value's binade
    assert s == min(max(15 - top, -126), 126)
    assert bool(ok[0]) == (bool((_lowest_bit(row[0]) + s >= -24).all()) and top + s <= 15)
    if ok[0]:
        h = (row.double() * 2.0**s).half()
        assert torch.equal(h.double() * 2.0**-s, row.double())


@needs_fbgemm
def test_one_hot_activations_read_every_weight_back_exactly_rows_apart_included():
    torch.manual_seed(0)
    w = torch.randn(12, 40) * 0.05
    w[3, 0], w[3, 1] = 1e-12, 1e3  # 73 binades apart: computed apart
    w[5] = 0
    w[7] = 1e-39  # bf16 subnormals: the largest shift
    w[9] = torch.linspace(-1, 1, 40) * 3e38  # near the largest bf16s: the most negative shift
    qt = _bf16(w)
    kern = Bf16Fp16Kernel.from_qtensor(qt)
    assert kern._apart.tolist() == [3]
    got = kern(torch.eye(40))
    assert torch.equal(got.T, qt.dequantize(torch.float32))


@needs_fbgemm
@pytest.mark.parametrize("m", [1, 5, 70])
def test_the_float_layers_products_on_the_stored_values(m):
    torch.manual_seed(1)
    w = torch.randn(300, 1000)
    w[17, :3] = torch.tensor([1e-15, 1e4, float("nan")])  # rows apart (NaN: not fp16-exact after any shift)
    w[40, :2] = torch.tensor([1e-15, 1e4])
    qt = _bf16(w)
    kern = Bf16Fp16Kernel.from_qtensor(qt)
    assert kern._apart.tolist() == [17, 40]
    x, bias = torch.randn(m, 1000), torch.randn(300)
    want = F.linear(x.double(), qt.dequantize(torch.float32).double(), bias.double())
    got = kern(x, bias)
    assert got.shape == (m, 300) and got.dtype == torch.float32 and kern.nbytes == 300 * 1000 * 2 + 300 * 4
    assert got[:, 17].isnan().all()
    keep = torch.arange(300) != 17
    torch.testing.assert_close(got[:, keep].double(), want[:, keep], rtol=1e-5, atol=1e-4)


def test_formats_other_than_plain_bf16_are_refused():
    with pytest.raises(KernelUnsupported, match="2-D bf16"):
        Bf16Fp16Kernel.from_qtensor(QuantizedTensor.from_float(torch.randn(8, 64), "fp16"))
