"""The lookup GEMVs of binary and two-bit weights (int2, uint2 with zero points, ternary): the AVX2, AVX-512 BW and
portable paths and the PyTorch reference give the same bits on any host, their integer dots equal the bit-plane
GEMV's, and auto takes them for small requests only where AVX2 is present."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.layout import Layout
from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.c_binlut import CBinaryLutKernel, CTwoBitLutKernel
from bitladder.kernels.c_lowbit import CLowbitKernel
from bitladder.kernels.cpu import current
from bitladder.kernels.select import choose
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not CBinaryLutKernel.installed(), reason="C kernels not built (no compiler)")

CASES = [(Layout("channel"), 40, 96), (Layout("channel"), 37, 1000), (Layout("group", group=32), 70, 256),
         (Layout("group", group=64), 64, 320), (Layout("group", group=128), 33, 512),
         (Layout("group", group=256), 32, 1024), (Layout("tensor"), 5, 77)]


def _paths(qt, x, cls=CBinaryLutKernel):
    portable = cls.from_qtensor(qt, simd=False)
    ref = portable.reference(x)
    simd = [cls.from_qtensor(qt, simd=s)(x) for s in (1, 2)]  # AVX2, AVX-512 BW where the host has them
    return ref, portable(x), simd


@pytest.mark.parametrize("layout,n,k", CASES)
def test_both_paths_equal_the_reference_bit_for_bit_and_track_the_float_product(layout, n, k):
    qt = QuantizedTensor.from_float(torch.randn(n, k), "binary", layout)
    x = torch.randn(3, k)
    ref, portable, simd = _paths(qt, x)
    assert ref.shape == (3, n)
    assert torch.equal(portable, ref) and all(torch.equal(y, ref) for y in simd)
    exact = x @ qt.dequantize().T
    assert float((ref - exact).norm() / exact.norm()) < 0.02  # int8 activations per block cost ~1 %


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 80), cols=st.integers(1, 12), group=st.sampled_from([32, 64, 128, 256, None]),
       m=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), extreme=st.booleans())
def test_any_shape_and_activation_range_is_exact(n, cols, group, m, seed, extreme):
    k = 32 * cols - (seed % 31)  # K need not be a multiple of anything: padding codes and inputs are zero
    gen = torch.Generator().manual_seed(seed)
    layout = Layout("channel") if group is None else Layout("group", group=group)
    qt = QuantizedTensor.from_float(torch.randn(n, k, generator=gen), "binary", layout)
    x = torch.randn(m, k, generator=gen)
    if extreme:  # every input at +-absmax: the subset sums reach +-508, the ends of the 10-bit table entries
        x = torch.where(x >= 0, 3.0, -3.0)
    ref, portable, simd = _paths(qt, x)
    assert torch.equal(portable, ref) and all(torch.equal(y, ref) for y in simd)


@pytest.mark.parametrize("fmt,layout,cls", [("binary", Layout("group", group=64), CBinaryLutKernel),
                                            ("int2", Layout("group", group=64), CTwoBitLutKernel),
                                            ("ternary", Layout("channel"), CTwoBitLutKernel)])
def test_the_same_integer_dots_as_the_bit_plane_gemv(fmt, layout, cls):
    qt = QuantizedTensor.from_float(torch.randn(64, 512), fmt, layout)
    x = torch.randn(2, 512)
    lut, planes = cls.from_qtensor(qt)(x), CLowbitKernel.from_qtensor(qt)(x)
    # only the order of the float sums over blocks differs
    assert torch.allclose(lut, planes, rtol=1e-5, atol=1e-5 * float(planes.abs().max()))


def test_zero_activations_bias_storage_and_refused_formats():
    qt = QuantizedTensor.from_float(torch.randn(40, 256), "binary", Layout("group", group=64))
    kern = CBinaryLutKernel.from_qtensor(qt)
    assert torch.equal(kern(torch.zeros(2, 256)), torch.zeros(2, 40))
    assert torch.allclose(kern(torch.zeros(1, 256), torch.ones(40)), torch.ones(1, 40))
    # one bit a weight (rows padded to a tile of 32) plus one fp16 scale per group
    assert kern.nbytes == 64 * 256 // 8 + 64 * 4 * 2
    assert isinstance(kern.w, np.ndarray) and kern.w.dtype == np.uint8
    for fmt, layout in (("int2", Layout("group", group=64)), ("binary", Layout("group", group=16))):
        bad = QuantizedTensor.from_float(torch.randn(8, 64), fmt, layout)
        assert not CBinaryLutKernel.applies(bad)
        with pytest.raises(KernelUnsupported, match="1-bit codes"):
            CBinaryLutKernel.from_qtensor(bad)


def test_auto_picks_it_at_every_batch_without_vnni_and_to_32_rows_with():
    qt = QuantizedTensor.from_float(torch.randn(64, 256), "binary", Layout("group", group=64))
    avx2 = current({"BITLADDER_CPU": "avx2"})
    for m in (1, 32, 33, 1504):  # without VNNI the lookups stay ahead of the batch GEMM's binary path
        assert (choose(qt, m, cpu=avx2) == "c-binary-lut") == avx2.has("avx2"), m
    vnni = current({"BITLADDER_CPU": "avx512-vnni"})
    if vnni.has("avx2", "avx512_vnni"):
        assert choose(qt, 32, cpu=vnni) == "c-binary-lut"
        assert choose(qt, 33, cpu=vnni) == "c-lowbit-tiles"  # the same int8 grid, vpdpbusd
    assert choose(qt, 1, cpu=current({"BITLADDER_CPU": "default"})) != "c-binary-lut"  # the portable path is slow
    assert choose(qt, 1, binary_activations=True, cpu=avx2) == "binary-xnor"  # XNOR stays an explicit choice


# ---- two bit planes (c-2bit-lut) ----

CASES2 = [("int2", Layout("channel"), 40, 96), ("int2", Layout("group", group=32), 70, 256),
          ("int2", Layout("group", group=64), 64, 320), ("int2", Layout("group", group=128), 33, 512),
          ("int2", Layout("group", group=256), 32, 1024), ("ternary", Layout("channel"), 37, 1000),
          ("int2", Layout("tensor"), 5, 77), ("uint2", Layout("group", group=64), 70, 320),
          ("uint2", Layout("channel"), 33, 200)]


@pytest.mark.parametrize("fmt,layout,n,k", CASES2)
def test_two_bit_paths_equal_the_reference_bit_for_bit_and_track_the_float_product(fmt, layout, n, k):
    qt = QuantizedTensor.from_float(torch.randn(n, k), fmt, layout, symmetric=not fmt.startswith("u"))
    x = torch.randn(3, k)
    ref, portable, simd = _paths(qt, x, CTwoBitLutKernel)
    assert ref.shape == (3, n)
    assert torch.equal(portable, ref) and all(torch.equal(y, ref) for y in simd)
    exact = x @ qt.dequantize().T
    assert float((ref - exact).norm() / exact.norm()) < 0.02  # int8 activations per block cost ~1 %


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 80), cols=st.integers(1, 12), group=st.sampled_from([32, 64, 128, 256, None]),
       m=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), extreme=st.booleans(), asym=st.booleans())
def test_two_bit_any_shape_and_activation_range_is_exact(n, cols, group, m, seed, extreme, asym):
    k = 32 * cols - (seed % 31)  # K need not be a multiple of anything: padding codes and inputs are zero
    gen = torch.Generator().manual_seed(seed)
    layout = Layout("channel") if group is None else Layout("group", group=group)
    w = torch.randn(n, k, generator=gen) + (0.5 if asym else 0.0)  # a shifted range: zero points away from the middle
    qt = QuantizedTensor.from_float(w, "uint2" if asym else "int2", layout, symmetric=not asym)
    x = torch.randn(m, k, generator=gen)
    if extreme:  # every input at +-absmax: subset sums at the ends of the 10-bit table entries
        x = torch.where(x >= 0, 3.0, -3.0)
    ref, portable, simd = _paths(qt, x, CTwoBitLutKernel)
    assert torch.equal(portable, ref) and all(torch.equal(y, ref) for y in simd)


@pytest.mark.parametrize("group", [64, 128, None])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_two_bit_largest_codes_times_largest_activations_stay_exact(group, sign):
    # every code 3 and every input at +-127: the largest weighted sums (blocks of 128 are summed in halves)
    layout = Layout("channel") if group is None else Layout("group", group=group)
    qt = QuantizedTensor.from_float(torch.randn(64, 512), "int2", layout)
    x = torch.full((1, 512), sign)
    portable = CTwoBitLutKernel.from_qtensor(qt, simd=False)
    portable.w[:] = 0xFF
    ref = portable.reference(x)
    assert torch.equal(portable(x), ref)
    assert float(ref.abs().max()) > 0
    for s in (1, 2):
        kern = CTwoBitLutKernel.from_qtensor(qt, simd=s)
        kern.w[:] = 0xFF
        assert torch.equal(kern(x), ref), s


def test_two_bit_storage_and_refused_formats():
    qt = QuantizedTensor.from_float(torch.randn(40, 256), "int2", Layout("group", group=64))
    kern = CTwoBitLutKernel.from_qtensor(qt)
    assert torch.equal(kern(torch.zeros(2, 256)), torch.zeros(2, 40))
    # two bits a weight (rows padded to a tile of 32) plus one fp16 scale per group
    assert kern.nbytes == 64 * 256 // 4 + 64 * 4 * 2
    asym = QuantizedTensor.from_float(torch.randn(40, 256) + 1, "uint2", Layout("group", group=64), symmetric=False)
    assert CTwoBitLutKernel.from_qtensor(asym).nbytes == 64 * 256 // 4 + 64 * 4 * 3  # + a one-byte offset per group
    for fmt, layout, sym in (("binary", Layout("channel"), True),
                             ("int4", Layout("group", group=64), True), ("int2", Layout("group", group=16), True)):
        bad = QuantizedTensor.from_float(torch.randn(8, 64), fmt, layout, symmetric=sym)
        assert not CTwoBitLutKernel.applies(bad)
        with pytest.raises(KernelUnsupported, match="2-bit codes"):
            CTwoBitLutKernel.from_qtensor(bad)


@pytest.mark.parametrize("fmt,layout", [("int2", Layout("group", group=64)), ("ternary", Layout("channel"))])
def test_two_bit_auto_takes_it_for_a_few_rows_then_the_tiles_on_the_same_grid(fmt, layout):
    qt = QuantizedTensor.from_float(torch.randn(64, 256), fmt, layout)
    last = CTwoBitLutKernel.auto_rows[1]
    for level in ("avx2", "avx512", "avx512-vnni"):
        cpu = current({"BITLADDER_CPU": level})
        for m in (1, last):  # a few rows: the table lookups
            assert (choose(qt, m, cpu=cpu) == "c-2bit-lut") == cpu.has("avx2"), (level, m)
        for m in (last + 1, 33, 600):  # then the batch GEMM, int8 activations per block as before (AVX2 hosts)
            assert (choose(qt, m, cpu=cpu) == "c-lowbit-tiles") == cpu.has("avx2"), (level, m)
    assert choose(qt, 1, cpu=current({"BITLADDER_CPU": "default"})) != "c-2bit-lut"  # the portable path is slow
    asym = QuantizedTensor.from_float(torch.randn(64, 256), "uint2", Layout("group", group=64), symmetric=False)
    avx2 = current({"BITLADDER_CPU": "avx2"})
    assert (choose(asym, 1, cpu=avx2) == "c-2bit-lut") == avx2.has("avx2")  # zero points too


@pytest.mark.parametrize("fmt", ["int2", "binary"])
def test_more_rows_than_one_pass_takes(fmt):
    # 70 rows: passes of 32, 32 and 6 rows over the weights, each row's tables made before its pass
    cls = CTwoBitLutKernel if fmt == "int2" else CBinaryLutKernel
    qt = QuantizedTensor.from_float(torch.randn(70, 256), fmt, Layout("group", group=64))
    x = torch.randn(70, 256)
    ref = cls.from_qtensor(qt, simd=False).reference(x)
    for s in (0, 1, 2):
        assert torch.equal(cls.from_qtensor(qt, simd=s)(x), ref), s


@pytest.mark.parametrize("fmt,m,k", [("binary", 1, 9000), ("int2", 1, 9000), ("binary", 5, 2000)])
def test_threads_sharing_the_activations_and_tables_give_the_same_bits(fmt, m, k, same_bits_on_every_thread_count):
    # from 8192 activations the threads share their quantisation and tables, a single row's blocks too; three
    # tiles of 32 rows, so on AVX-512 BW one thread has a pair and another the odd tile
    cls = CTwoBitLutKernel if fmt == "int2" else CBinaryLutKernel
    qt = QuantizedTensor.from_float(torch.randn(96, k), fmt, Layout("group", group=64))
    same_bits_on_every_thread_count(cls, qt, torch.randn(m, k))


@pytest.mark.parametrize("fmt,cls", [("binary", CBinaryLutKernel), ("int2", CTwoBitLutKernel)])
def test_the_tiles_are_packed_in_panels_for_the_path_that_runs_them(fmt, cls):
    from bitladder.kernels import c_binlut
    from bitladder.kernels.packrows import columns

    qt = QuantizedTensor.from_float(torch.randn(100, 256), fmt, Layout("group", group=64))  # four tiles of 32 rows
    plain = cls.from_qtensor(qt, simd=0)
    assert plain.tn == 1  # the portable path: one tile a panel, the plain tile layout
    x = torch.randn(2, 256)
    for s in (1, 2):
        kern = cls.from_qtensor(qt, simd=s)
        assert kern.tn == c_binlut._binlut.panel_tiles(s)  # the C entry's own choice on this host
        assert kern.tn in (1, 2) and (kern.tn == 1 or s == 2)
        # the same bytes, interleaved tile by tile within a panel; unpacked they are the plain layout
        assert np.array_equal(columns(kern.w.reshape(kern.tiles, -1), kern.tn), plain.w.reshape(plain.tiles, -1))
        assert torch.equal(kern(x), plain(x))
