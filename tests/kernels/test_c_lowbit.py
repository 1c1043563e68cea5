"""The C low-bit GEMV: the AVX2 path, the portable path and the PyTorch reference give the same bits, on any host."""

import pytest
import torch

from bitladder.formats.layout import Layout
from bitladder.kernels.c_lowbit import CLowbitKernel, c_module
from bitladder.kernels.cpu import current
from bitladder.kernels.fbgemm_w8a8 import FbgemmW8A8Kernel
from bitladder.kernels.onnx_nbits import OrtNBitsKernel
from bitladder.kernels.select import choose
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not CLowbitKernel.installed(), reason="C kernels not built (no compiler)")

CASES = [("int4", Layout("group", group=64), 256), ("uint4", Layout("group", group=32), 200),
         ("int2", Layout("group", group=64), 384), ("int3", Layout("group", group=256), 512),
         ("uint2", Layout("group", group=128), 130), ("ternary", Layout("channel"), 200),
         ("binary", Layout("channel"), 96), ("int4", Layout("tensor"), 77), ("int8", Layout("channel"), 300),
         ("int8", Layout("group", group=128), 256), ("int6", Layout("group", group=32), 96)]


@pytest.mark.parametrize("m", [1, 3, 9])  # 9 rows: tiles of four (VNNI) or two (AVX2), then single rows
@pytest.mark.parametrize("fmt,layout,k", CASES)
def test_both_paths_equal_the_reference_bit_for_bit_and_track_the_float_product(fmt, layout, k, m):
    w = torch.randn(40, k)
    qt = QuantizedTensor.from_float(w, fmt, layout, symmetric=not fmt.startswith("u"))
    x = torch.randn(m, k)
    portable = CLowbitKernel.from_qtensor(qt, simd=False)
    ref = portable.reference(x)
    assert torch.equal(portable(x), ref)
    assert torch.equal(CLowbitKernel.from_qtensor(qt, simd=True)(x), ref)  # AVX2 where the host has it
    assert torch.equal(CLowbitKernel.from_qtensor(qt, simd=2)(x), ref)  # AVX-512 VNNI where the host has it
    exact = x @ qt.dequantize().T
    assert float((ref - exact).norm() / exact.norm()) < 0.02  # int8 activations per block cost ~1 %


@pytest.mark.parametrize("fmt,m,k", [("int4", 1, 9000), ("int8", 5, 2000), ("int2", 3, 4000)])
def test_threads_sharing_the_quantisation_of_the_activations_give_the_same_bits(fmt, m, k,
                                                                              same_bits_on_every_thread_count):
    # from 8192 activations the threads share their quantisation, a single row's blocks too (kernels/c/common.h)
    qt = QuantizedTensor.from_float(torch.randn(24, k), fmt, Layout("group", group=64))
    same_bits_on_every_thread_count(CLowbitKernel, qt, torch.randn(m, k))


@pytest.mark.parametrize("fmt,layout", [("int2", Layout("group", group=128)), ("int2", Layout("group", group=64)),
                                        ("binary", Layout("channel")), ("int4", Layout("group", group=32)),
                                        ("int4", Layout("group", group=64)), ("int4", Layout("group", group=128)),
                                        ("int8", Layout("channel"))])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_largest_codes_times_largest_activations_stay_exact(fmt, layout, sign):
    # every code at its largest and every activation at +-127: the largest sums the AVX2 path adds in 16 bits
    # (four chunks of pair sums per block) and the largest 8-bit pair sums
    qt = QuantizedTensor.from_float(torch.randn(24, 512), fmt, layout)
    x = torch.full((1, 512), sign)
    portable = CLowbitKernel.from_qtensor(qt, simd=False)
    portable.w[:] = 0x7F if fmt == "int8" else 0xFF  # int8 codes are stored signed: 127 is the largest
    ref = portable.reference(x)
    assert torch.equal(portable(x), ref)
    for simd in (True, 2):
        kern = CLowbitKernel.from_qtensor(qt, simd=simd)
        kern.w[:] = portable.w
        assert torch.equal(kern(x), ref), simd


@pytest.mark.parametrize("fmt", ["int4", "int8", "int2", "binary"])
def test_packing_in_row_steps_gives_the_whole_packing(fmt, monkeypatch):
    from bitladder.kernels import c_lowbit

    qt = QuantizedTensor.from_float(torch.randn(40, 128), fmt, Layout("group", group=64) if fmt != "binary"
                                    else Layout("channel"))
    whole = CLowbitKernel.from_qtensor(qt).w
    monkeypatch.setattr(c_lowbit, "_ROWS_PER_STEP", 7)  # 40 rows: five full steps and a short one
    assert c_lowbit._ROWS_PER_STEP == 7 and whole.shape[0] == 40
    assert (CLowbitKernel.from_qtensor(qt).w == whole).all()


def test_zero_activations_and_bias_and_refused_formats():
    qt = QuantizedTensor.from_float(torch.randn(8, 64), "int4", Layout("group", group=32))
    k = CLowbitKernel.from_qtensor(qt)
    assert torch.equal(k(torch.zeros(2, 64)), torch.zeros(2, 8))
    assert torch.allclose(k(torch.zeros(1, 64), torch.ones(8)), torch.ones(1, 8))
    assert not CLowbitKernel.applies(QuantizedTensor.from_float(torch.randn(8, 64), "uint8", symmetric=False))
    assert not CLowbitKernel.applies(QuantizedTensor.from_float(torch.randn(8, 64), "int4", Layout("group", group=16)))


def test_auto_takes_it_for_8_bit_codes_where_the_cpu_has_avx2():
    int4 = QuantizedTensor.from_float(torch.randn(64, 256), "int4", Layout("group", group=64))
    int8 = QuantizedTensor.from_float(torch.randn(64, 256), "int8", Layout("channel"))
    binary = QuantizedTensor.from_float(torch.randn(64, 256), "binary", Layout("channel"))
    for name in ("avx2", "avx512-vnni"):
        cpu = current({"BITLADDER_CPU": name})
        if not cpu.has("avx2"):
            continue
        # codes of 1-4 bits: the batch GEMM on the same grid at every row count (test_c_tiles.py)
        assert all(choose(int4, m, cpu=cpu) == "c-lowbit-tiles" for m in (1, 2, 18, 33, 1504))
        # 8-bit codes: two rows (four with vpdpbusd), then on a small layer exact float activations, which are faster
        # than MatMulNBits' int8 path there (at most SMALL_WEIGHTS weights: dequantised in C every call, else the
        # fp16 codes); a large one keeps MatMulNBits to 16 rows
        last = 4 if cpu.has("avx512_vnni") else 2
        assert all(choose(int8, m, cpu=cpu) == "c-lowbit-a8" for m in range(1, last + 1))
        assert all(choose(int8, m, cpu=cpu) == "numba-dequant-fp32" for m in (last + 1, 16, 17))
        wider = QuantizedTensor.from_float(torch.randn(128, 256), "int8", Layout("channel"))
        assert all(choose(wider, m, cpu=cpu) == "fbgemm-fp16-codes" for m in (last + 1, 16, 17))
        if OrtNBitsKernel.available(cpu):
            big = QuantizedTensor.from_float(torch.randn(1024, 1024), "int8", Layout("channel"))
            assert choose(big, last + 1, cpu=cpu) == choose(big, 16, cpu=cpu) == "ort-nbits"
        assert choose(binary, 18, cpu=cpu) != "c-lowbit-a8"  # binary: table lookups to 16 rows, then fp16 codes
    assert choose(int4, 1, cpu=current({"BITLADDER_CPU": "default"})) != "c-lowbit-a8"  # the portable path is slow


def test_xnor_paths_agree_bit_for_bit():
    import numpy as np

    from bitladder.kernels import XnorKernel

    # 576: a vector and a word; groups of 64 and 128 past eight: whole groups eight at a time, a short last one
    cases = ((Layout("channel"), 1000), (Layout("channel"), 1001), (Layout("group", group=256), 4096),
             (Layout("group", group=64), 320), (Layout("group", group=576), 1152), (Layout("group", group=64), 1000),
             (Layout("group", group=128), 2048), (Layout("group", group=64), 1088))
    for layout, k in cases:
        kern = XnorKernel.from_qtensor(QuantizedTensor.from_float(torch.randn(37, k), "binary", layout), "c")
        x = torch.randn(5, k)
        x[0, :7] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 0.5])  # signs of edge values
        x = x.numpy()
        got = []
        for hw in (0, 1, 2):  # portable popcount, then AVX2's lookup and AVX-512 VPOPCNTDQ where the host has them
            y = np.empty((5, 37), np.float32)
            c_module().xnor(kern.wb, kern.s, x, y, 5, 37, k, kern.gwords, kern.nb, hw, 2)
            got.append(y)
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
        assert np.array_equal(got[0], kern(torch.from_numpy(x)).numpy())


def test_xnor_takes_the_popcount_the_cpu_level_has():
    from bitladder.kernels.numba_kernels import xnor_path

    levels = {"default": 0, "avx2": 1, "avx512": 1, "avx512-vnni": 2}  # Skylake-SP: no VPOPCNTDQ, the AVX2 lookup
    for level, path in levels.items():
        assert xnor_path(current({"BITLADDER_CPU": level})) == min(path, xnor_path(current({})))


def test_the_per_token_family_takes_it_at_one_row():
    qt = QuantizedTensor.from_float(torch.randn(64, 256), "int8", Layout("channel"))
    avx2 = current({"BITLADDER_CPU": "avx2"})
    few = "fbgemm" if FbgemmW8A8Kernel.available() else "onednn"  # torch has no fbgemm without AVX2
    one = choose(qt, 1, "int8-w8a8-token", cpu=avx2)
    assert one == ("c-lowbit-a8" if avx2.has("avx2") else f"int8-w8a8-{few}-token")
    assert choose(qt, 2, "int8-w8a8-token", cpu=avx2) == f"int8-w8a8-{few}-token"
    assert choose(qt, 1, "int8-w8a8", cpu=avx2) == f"int8-w8a8-{few}"  # per tensor keeps its own grid
    int4 = QuantizedTensor.from_float(torch.randn(64, 256), "int4", Layout("group", group=64))  # W4A8 per token
    assert choose(int4, 1, "int8-w8a8-token", cpu=avx2) == ("c-lowbit-tiles" if avx2.has("avx2")
                                                             else f"int8-w8a8-{few}-token")
    x = torch.randn(1, 256)
    exact = x @ qt.dequantize().T
    assert float((CLowbitKernel.from_qtensor(qt)(x) - exact).norm() / exact.norm()) < 0.01


DEQUANT_CASES = [("int4", Layout("group", group=64), 200), ("uint4", Layout("group", group=32), 130),
                 ("int4", Layout("channel"), 77), ("int8", Layout("group", group=32), 96),
                 ("uint8", Layout("channel"), 45), ("int8", Layout("tensor"), 300)]


@pytest.mark.parametrize("fmt,layout,k", DEQUANT_CASES)
def test_dequantisation_paths_give_the_same_bits_and_the_weight(fmt, layout, k):
    # the batch path's whole-weight dequantisation: AVX2 (vector body + scalar tail) and portable C agree to the bit
    from bitladder.kernels.numba_dequant import NumbaDequantKernel

    if not NumbaDequantKernel.available():
        pytest.skip("numba not installed (the planes are the numba kernels')")
    qt = QuantizedTensor.from_float(torch.randn(33, k), fmt, layout, symmetric=not fmt.startswith("u"))
    kern = NumbaDequantKernel.from_qtensor(qt)
    kern.simd = 1
    vec = kern.weight().clone()
    kern.simd = 0
    assert torch.equal(kern.weight(), vec)
    torch.testing.assert_close(vec, qt.dequantize(torch.float32), rtol=1e-6, atol=1e-6)


def test_dequantisation_refuses_buffers_that_do_not_fit():
    import numpy as np

    w, s, out = np.zeros((4, 32), np.uint8), np.ones((4, 1), np.float32), np.zeros((4, 64), np.float32)
    c_module().dequant(w, s, s, out, 4, 64, 64, 4, 0, 1, 1)  # fits: 4 rows of 64 nibbles
    for bad in [(4, 128, 64, 4), (4, 64, 48, 4), (4, 64, 64, 3), (5, 64, 64, 4)]:  # short, group, bits, rows
        n, kp, g, bits = bad
        with pytest.raises(ValueError, match="lowbit.dequant: buffer sizes or group size do not fit"):
            c_module().dequant(w, s, s, out, n, kp, g, bits, 0, 1, 1)
