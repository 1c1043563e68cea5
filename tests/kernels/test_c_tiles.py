"""The C batch GEMM for 1- to 4-bit codes: every path gives the reference's bits, a row's result does not depend on
the batch it came in, and it shares the GEMV's activation grid."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.errors import BitladderError
from bitladder.formats.layout import Layout
from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.c_lowbit import CLowbitKernel, c_module
from bitladder.kernels.c_tiles import CTilesKernel
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not CTilesKernel.installed(), reason="C kernels not built (no compiler)")

FORMATS = [("int4", "group", True), ("uint4", "group", False), ("int3", "group", True), ("int2", "group", True),
           ("uint2", "group", False), ("ternary", "channel", True), ("binary", "channel", True),
           ("int4", "tensor", True)]


def _qt(fmt, gran, sym, n, k, group=64, seed=0):
    torch.manual_seed(seed)
    layout = Layout("group", group=group) if gran == "group" else Layout(gran)
    return QuantizedTensor.from_float(torch.randn(n, k) + (0 if sym else 0.5), fmt, layout, symmetric=sym)


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(1, 40), kg=st.integers(1, 5), group=st.sampled_from([32, 64, 128]),
       m=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_every_path_gives_the_reference_bits(fmt, n, kg, group, m, seed):
    name, gran, sym = fmt
    k = kg * group - (seed % 7 if gran != "group" else 0)  # K off the block size where one scale covers a row
    qt = _qt(name, gran, sym, n, k, group, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    ref = CTilesKernel.from_qtensor(qt, simd=0).reference(x)
    # portable, AVX2, AVX-512 VNNI, 512-bit registers without and with VNNI (each falls back to a lesser path on a
    # lesser host)
    for simd in (0, 1, 2, 3, 4):
        assert torch.equal(CTilesKernel.from_qtensor(qt, simd=simd)(x), ref), simd


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_row_is_the_same_alone_or_in_a_batch_and_tracks_the_float_product(fmt):
    name, gran, sym = fmt
    qt = _qt(name, gran, sym, 52, 384)
    kern = CTilesKernel.from_qtensor(qt)
    x = torch.randn(131, 384)  # 131 rows: chunks of 64, tiles of four (or two) and single rows
    y = kern(x)
    for r in (0, 63, 64, 130):
        assert torch.equal(kern(x[r: r + 1]), y[r: r + 1])
    exact = x @ qt.dequantize().T
    assert float((y - exact).norm() / exact.norm()) < 0.02  # int8 activations per block cost ~1 %
    # the GEMV's activation grid: the same integer dots, only the float sum's order differs
    gemv = CLowbitKernel.from_qtensor(qt)(x)
    assert torch.allclose(y, gemv, rtol=1e-5, atol=1e-4 * float(gemv.abs().max()))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f[1] != "group"])
@pytest.mark.parametrize("k", [1, 40, 64, 96])
def test_a_layer_narrower_than_one_block_is_not_padded_to_it_and_keeps_its_bits(fmt, k):
    # one block of the layer's width (in 32s), not of 128: the GEMV's zero padding moves no code, scale or sum
    name, gran, sym = fmt
    qt = _qt(name, gran, sym, 21, k, seed=k)
    x = torch.randn(37, k)
    gemv = CLowbitKernel.from_qtensor(qt)
    ref = CTilesKernel.from_qtensor(qt, simd=0).reference(x)
    assert torch.equal(ref, gemv(x))
    for simd in (0, 1, 2, 3, 4):
        kern = CTilesKernel.from_qtensor(qt, simd=simd)
        assert kern.kp == kern.xb == -(-k // 32) * 32
        assert torch.equal(kern(x), ref), simd


@pytest.mark.parametrize("m,k", [(1, 9000), (5, 2000)])
def test_threads_sharing_the_quantisation_of_the_activations_give_the_same_bits(m, k, same_bits_on_every_thread_count):
    # from 8192 activations the threads share their quantisation, a single row's blocks too (kernels/c/common.h)
    same_bits_on_every_thread_count(CTilesKernel, _qt("int4", "group", True, 60, k), torch.randn(m, k))


@pytest.mark.parametrize("fmt", ["int4", "uint4", "int2", "binary"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_largest_codes_times_largest_activations_stay_exact(fmt, sign):
    # every code at its largest and every activation at +-127: the sums AVX2 adds in 16 bits before widening
    gran, sym = ("channel", True) if fmt == "binary" else ("group", not fmt.startswith("u"))
    qt = _qt(fmt, gran, sym, 24, 512, group=128)
    x = torch.full((5, 512), sign)
    portable = CTilesKernel.from_qtensor(qt, simd=0)
    portable.w[:] = 0xFF
    ref = portable.reference(x)
    assert torch.equal(portable(x), ref)
    codes = torch.from_numpy(portable.w.astype(np.int64))
    assert int(codes.min()) == 255
    for simd in (1, 2, 3, 4):
        kern = CTilesKernel.from_qtensor(qt, simd=simd)
        kern.w[:] = portable.w
        assert torch.equal(kern(x), ref), simd


def test_stored_in_its_bits_with_zero_rows_bias_and_input_scale():
    qt = _qt("int4", "group", True, 44, 256)
    kern = CTilesKernel.from_qtensor(qt)
    # 4 bits a weight (44 outputs padded to 48: columns of eight), one fp16 scale per output and group
    assert kern.nbytes == 48 * 256 // 2 + 48 * 4 * 2
    assert torch.equal(kern(torch.zeros(3, 256)), torch.zeros(3, 44))
    assert kern(torch.zeros(0, 256)).shape == (0, 44)
    x, bias, s = torch.randn(6, 256), torch.randn(44), torch.rand(256) + 0.5
    assert torch.equal(kern(x, bias, s), kern(x * s) + bias)
    with pytest.raises(ValueError, match="expected x of shape"):
        kern(torch.randn(2, 255))


def test_refuses_what_it_cannot_take():
    for fmt, layout in (("int8", Layout("channel")), ("int4", Layout("group", group=16)), ("fp16", Layout("tensor"))):
        qt = QuantizedTensor.from_float(torch.randn(8, 64), fmt, layout)
        assert not CTilesKernel.applies(qt)
        with pytest.raises(KernelUnsupported):
            CTilesKernel.from_qtensor(qt)
    kern = CTilesKernel.from_qtensor(_qt("int4", "group", True, 8, 64))
    y = np.empty((1, 8), np.float32)
    with pytest.raises(ValueError, match="lowbit.tiles"):  # a weight buffer shorter than its shape needs
        c_module().tiles(kern.w[:, :4], kern.ws, None, np.zeros((1, 64), np.float32), y, 1, 8, 64, kern.kp,
                         kern.g, kern.xb, kern.bits, kern.mult, kern.off, 1, 1)
    assert issubclass(KernelUnsupported, BitladderError)


def test_packing_in_column_steps_gives_the_whole_packing(monkeypatch):
    from bitladder.kernels import c_tiles

    qt = _qt("int4", "group", True, 77, 128)  # ten columns of eight outputs, the last one part padding
    whole = CTilesKernel.from_qtensor(qt).w
    monkeypatch.setattr(c_tiles, "_COLUMNS_PER_STEP", 3)  # steps of 3, 3, 3 and 1 columns
    assert np.array_equal(CTilesKernel.from_qtensor(qt).w, whole)


def test_the_weights_are_packed_for_the_path_that_runs_them():
    qt = _qt("int4", "group", True, 77, 128)
    for simd in (0, 1, 2, 3, 4):
        kern = CTilesKernel.from_qtensor(qt, simd=simd)
        assert kern.tn == c_module().panel_cols(simd)  # the C entry's own choice on this host
        assert kern.tn == 1 or simd > 0
    assert c_module().panel_cols(0) == 1  # the portable path: one column a panel, the plain column layout


@pytest.mark.parametrize("n", [8, 16, 24, 40, 72])  # one to nine columns: every width of a panel's last tile
@pytest.mark.parametrize("m", [1, 3, 4, 9])
@pytest.mark.parametrize("simd", [3, 4])
def test_512_bit_tiles_cover_odd_panels_and_rows(n, m, simd):
    # two columns a zmm register: a panel of odd width ends in a masked half (that path's own layout)
    qt = _qt("int4", "group", True, n - 3, 192, group=64, seed=n + m)
    x = torch.randn(m, 192)
    kern = CTilesKernel.from_qtensor(qt, simd=simd)
    assert torch.equal(kern(x), CTilesKernel.from_qtensor(qt, simd=0).reference(x))


def test_the_tiles_take_512_bit_registers_where_avx512bw_is(monkeypatch):
    from bitladder.kernels.c_tiles import current, tiles_path

    for level in ("avx512", "avx512-vnni", "avx2", "default"):
        monkeypatch.setenv("BITLADDER_CPU", level)
        cpu = current()
        if cpu.has("avx2", "avx512f", "avx512bw"):
            assert tiles_path(None) == (4 if cpu.has("avx512_vnni") else 3), level
        else:
            assert tiles_path(None) == int(cpu.has("avx2")), level
        assert tiles_path(1) == 1 and tiles_path(2) == 2  # a forced path is kept
