"""Static W8A8 in 16-bit pair products: both C paths give the reference's bits (the exact integer sum), the
largest codes against the largest weights do not saturate, the layer's own codes reach the GEMM whole, and the
static family takes it exactly where the integer GEMMs would split the grid."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.kernels import KERNELS, hadamard
from bitladder.kernels.base import KernelUnsupported, reference_linear
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.c_static import CStaticKernel
from bitladder.kernels.cpu import current
from bitladder.kernels.select import STATIC_C, choose
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not CStaticKernel.installed(), reason="C kernels not built (no compiler)")


def _qt(n, k, seed=0, fmt="int8", layout="channel"):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return QuantizedTensor.from_float(w, fmt, Layout(layout))


def fake(x, scale, zp, qtype):
    qt = get_qtype(qtype)
    return (torch.clamp(torch.round(x / scale) + zp, qt.qmin, qt.qmax) - zp) * scale


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 300), m=st.integers(1, 150), zp=st.integers(0, 255),
       bias=st.booleans(), outliers=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_both_paths_give_the_reference_bits(n, k, m, zp, bias, outliers, seed):
    g = torch.Generator().manual_seed(seed)
    qt = _qt(n, k, seed)
    q = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(m, k, generator=g) * 10
    side = (torch.randperm(k, generator=g)[: min(outliers, k)], torch.randn(n, min(outliers, k), generator=g), x)
    side = side if outliers else None
    ref = CStaticKernel.from_qtensor(qt, simd=0).bind(0.02, zp, "uint8").reference(q, zp, b, x, side)
    for simd in (0, 1, 2):  # portable, AVX2, AVX-512 BW (the portable one on a host without the path's ISA)
        kern = CStaticKernel.from_qtensor(qt, simd=simd).bind(0.02, zp, "uint8")
        assert torch.equal(kern.finish((q, zp), b, side), ref), simd
    base = kern.reference(q, zp)
    exact = (q.double() - zp) @ qt.codes().reshape(n, k).double().T  # the integer sum, in float64
    assert torch.allclose(base.double(), exact * torch.from_numpy(kern._sc[:n]).double(), rtol=1e-6, atol=1e-5)
    if side is not None:  # the channels' float product, added in the epilogue
        extra = x[:, side[0]].double() @ side[1].double().T + (0 if b is None else b.double())
        assert torch.allclose(ref.double(), base.double() + extra, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("simd", [1, 2])
@pytest.mark.parametrize("zp", [0, 255])
@pytest.mark.parametrize("sign", [1, -1])
def test_largest_codes_against_largest_weights_stay_exact(zp, sign, simd):
    # every pair of products at 255 * 128 (vpmaddubsw would saturate at 2 * 255 * 127): vpmaddwd adds into 32 bits
    n, k = 24, 4097  # an odd K: the padded last pair
    qt = _qt(n, k)
    kern = CStaticKernel.from_qtensor(qt, simd=simd).bind(0.01, zp, "uint8")
    kern.w[:] = -128 if sign > 0 else 127
    q = torch.full((9, k), 255 if zp == 0 else 0, dtype=torch.uint8)
    y = kern.finish((q, zp), None)
    assert torch.equal(y, kern.reference(q, zp))
    w = -128 if sign > 0 else 127
    expect = (float(q[0, 0]) - zp) * w * k * kern._sc[:n]
    assert torch.allclose(y[0], torch.from_numpy(expect.astype(np.float32)), rtol=1e-6)


@pytest.mark.parametrize("qtype,zp", [("uint8", 117), ("uint8", 0), ("int8", 0)])
@pytest.mark.parametrize("scaled", [False, True])
def test_the_layers_own_codes_give_the_fake_quantised_layer(qtype, zp, scaled):
    torch.manual_seed(1)
    w = torch.randn(40, 256)
    w[:, ::2] = w[:, ::2].sign() * w.abs().amax()  # every pair of products near the extreme
    qt = QuantizedTensor.from_float(w, "int8", Layout("channel"))
    g = get_qtype(qtype)
    scale = 4.0 / (g.qmax - g.qmin)
    kern = KERNELS[STATIC_C].from_qtensor(qt).bind(scale, zp, qtype)
    assert kern.levels == 255 and not kern.split
    x, s = torch.randn(70, 256) * 3, (torch.rand(256) + 0.5 if scaled else None)  # beyond the grid on both sides
    bias = torch.randn(40)
    ref = reference_linear(qt, fake(x if s is None else x * s, scale, zp, qtype)) + bias
    assert torch.allclose(kern(x, bias, s), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert torch.equal(kern(x[:0]), torch.zeros(0, 40))


@pytest.mark.parametrize("qtype,zp", [("uint8", 117), ("int8", 0)])
def test_a_rotated_input_is_rotated_and_quantised_in_one_pass(qtype, zp):
    if not CStaticKernel.from_qtensor(_qt(8, 64)).rotates:
        pytest.skip("the C transform was not built")
    torch.manual_seed(4)
    qt = _qt(24, 256, 4)
    g = get_qtype(qtype)
    scale = 4.0 / (g.qmax - g.qmin)
    kern = CStaticKernel.from_qtensor(qt).bind(scale, zp, qtype)
    x = torch.randn(33, 256) * 3
    ref = reference_linear(qt, fake(hadamard.butterflies(x, 64), scale, zp, qtype))
    y = kern.finish(kern.prepare_rotated(x, 64), None)
    # the codes of rotating first and quantising the rotated input as the layer does, exactly
    assert torch.equal(y, kern.finish(kern.prepare(hadamard.butterflies(x, 64), None), None))
    # the fake-quantised reference rounds ties its own way: at most one step on a code there
    assert torch.allclose(y, ref, rtol=1e-5, atol=scale * float(qt.dequantize().abs().max()))


def test_the_static_family_takes_it_exactly_where_the_grid_would_be_split():
    host = current()
    no_vnni = dataclasses.replace(host, flags=frozenset({"avx2", "avx512f", "avx512bw"}), fbgemm_cap=None)
    vnni = dataclasses.replace(no_vnni, flags=no_vnni.flags | {"avx512_vnni"})
    bare = dataclasses.replace(no_vnni, flags=frozenset())
    w8, w7 = _qt(32, 256), _qt(32, 256, fmt="int7")
    for m in (1, 16, 1500):
        assert choose(w8, m, "int8-w8a8-static", cpu=no_vnni) == STATIC_C
        assert choose(w8, m, "int8-w8a8-static", cpu=vnni) != STATIC_C  # oneDNN or fbgemm take the grid whole
        assert choose(w7, m, "int8-w8a8-static", cpu=no_vnni) != STATIC_C  # 7-bit weights cannot saturate
        assert choose(w8, m, "int8-w8a8-static", cpu=bare) == "int8-w8a8-onednn-static"  # no AVX2: the split
        assert choose(w8, m, "int8-w8a8-token", cpu=no_vnni) != STATIC_C  # dynamic grids are not its job


def test_bad_weights_and_buffers_are_refused():
    with pytest.raises(KernelUnsupported, match="per-channel"):
        CStaticKernel.from_qtensor(_qt(8, 64, fmt="int4", layout="channel"))
    kern = CStaticKernel.from_qtensor(_qt(8, 64), simd=1).bind(0.1, 3, "uint8")
    q = np.zeros((4, 64), np.uint8)
    with pytest.raises(ValueError, match="static16"):
        c_module().static16(kern.w, kern._sc, None, q, np.zeros((4, 7), np.float32), 4, 8, 64, 64, 3, 1, 8, 1)
    with pytest.raises(ValueError, match="static16"):  # a zero point outside the uint8 codes
        c_module().static16(kern.w, kern._sc, None, q, np.zeros((4, 8), np.float32), 4, 8, 64, 64, 300, 1, 8, 1)
    x, y = np.zeros((4, 64), np.float32), np.zeros((4, 8), np.float32)
    with pytest.raises(IndexError, match="outlier channel 64 is out of range for 64 inputs"):
        c_module().static16(kern.w, kern._sc, None, q, y, 4, 8, 64, 64, 3, 1, 8, 1, x, np.array([3, 64]),
                            np.zeros((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match="side product"):  # weights for fewer channels than indices
        c_module().static16(kern.w, kern._sc, None, q, y, 4, 8, 64, 64, 3, 1, 8, 1, x, np.array([3, 5]),
                            np.zeros((1, 1, 8), np.float32))


@pytest.mark.skipif(not CStaticKernel.available(current({"BITLADDER_CPU": "avx2"})),
                    reason="the C kernel's 16-bit pair products need AVX2 on the host")
def test_a_layer_with_outlier_channels_adds_them_in_the_epilogue(monkeypatch):
    import bitladder
    from bitladder.methods.quantize.methods import Act

    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    torch.manual_seed(3)
    x = torch.randn(16, 30, 96)
    x[..., 7] *= 40  # a wide channel, as transformers have
    lin = bitladder.quantize(torch.nn.Linear(96, 40), bitladder.Int(8, act=Act(outliers=2)), calib=[x])
    assert "outliers" in lin.qmeta
    y = lin(x)
    assert lin.kernel == STATIC_C
    monkeypatch.setattr(CStaticKernel, "adds_side", False)  # the same codes, the side product added by torch after
    after = lin(x)
    assert lin.kernel == STATIC_C and not torch.equal(y, after)
    assert torch.allclose(y, after, rtol=1e-5, atol=1e-5 * float(after.abs().max()))
    lin.set_kernel_policy("dequant-fp32")  # the fake-quantised layer plus the float side product, in torch
    ref = lin(x)  # torch's quantiser and the fake quantisation may round a tie apart: a code step at most
    assert float((y - ref).abs().max()) < 2 * float(lin.act_scale) * float(lin.qweight.dequantize().abs().max())


@pytest.mark.parametrize("n,threads", [(40, 2), (40, 3), (8, 2), (300, 7)])
def test_threads_split_columns_or_rows_and_give_the_same_bits(n, threads):
    # columns of outputs go to the threads where there are enough of them, rows where there are not (n = 8)
    m, k, zp = 211, 520, 77
    qt = _qt(n, k, 5)
    q = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    x = torch.randn(m, k)
    side = (torch.tensor([3, 500]), torch.randn(n, 2))
    for wide in (1, 2):  # the layouts of eight and of sixteen outputs a column, each also run portable (0)
        kern = CStaticKernel.from_qtensor(qt, simd=wide).bind(0.03, zp, "uint8")
        ref = kern.reference(q, zp, None, x, side)
        for simd in (0, wide):
            y = np.zeros((m, n), np.float32)
            c_module().static16(kern.w, kern._sc, None, q.numpy(), y, m, n, k, kern.kp, zp, simd, kern.lanes, threads,
                                x.numpy(), side[0].numpy(), kern._columns(side[1]))
            assert torch.equal(torch.from_numpy(y), ref), (simd, threads)


def test_a_path_given_the_wrong_layout_is_refused():
    kern = CStaticKernel.from_qtensor(_qt(16, 32), simd=2).bind(0.03, 0, "uint8")
    q, y = np.zeros((3, 32), np.uint8), np.zeros((3, 16), np.float32)
    for simd, lanes in ((1, 16), (2, 8), (3, 16), (0, 12)):
        with pytest.raises(ValueError, match="simd 2 takes 16 lanes, 1 takes 8"):
            c_module().static16(kern.w, kern._sc, None, q, y, 3, 16, 32, kern.kp, 0, simd, lanes, 1)
