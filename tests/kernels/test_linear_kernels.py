"""Every kernel against its pure-PyTorch reference (dequantise + matmul), odd shapes included."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bitladder.formats.layout import Layout
from bitladder.kernels import (
    KERNELS,
    DequantKernel,
    FbgemmW8A8Kernel,
    FbgemmW8A8TokenKernel,
    Fp16CodesKernel,
    Fp16GemvKernel,
    Int4PackBf16Kernel,
    KernelUnsupported,
    NumbaDequantKernel,
    NumbaLowbitKernel,
    OnednnW8A8Kernel,
    OnednnW8A8TokenKernel,
    OrtNBitsFp32Kernel,
    OrtNBitsKernel,
    XnorKernel,
    build_kernel,
    reference_linear,
    choose,
)
from bitladder.kernels.base import ANY_ROWS
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.cpu import current
from bitladder.kernels.fp16_codes import CAST_MAX, MKL_AHEAD, SMALL_WEIGHTS, CastKernel
from bitladder.kernels.select import candidates
from bitladder.pipeline.measure.warn import on_fallback
from bitladder.tensor.quantized import QuantizedTensor

# (N, K, M): K and N off every multiple of 8/32/64, batch 1, empty batch, a batch on the tile path
SHAPES = [(37, 200, 3), (33, 130, 1), (16, 64, 0), (40, 300, 7), (5, 96, 1)]
QTYPES = ["int8", "uint8", "int4", "uint4", "int3", "uint3", "int2", "uint2", "int6", "ternary", "binary"]
LAYOUTS = [Layout("group", group=64), Layout("group", group=32), Layout("channel"), Layout("tensor")]


def _qt(qname: str, layout: Layout, n: int, k: int, seed: int = 0) -> QuantizedTensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    return QuantizedTensor.from_float(w, qname, layout, symmetric=not qname.startswith("u"))


def _x(m: int, k: int) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(1))


def _relerr(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm().clamp_min(1e-12))


def _check(kern, qt, x, ref, tol):
    y = kern(x)
    assert y.dtype == torch.float32 and y.shape == (x.shape[0], qt.shape[0])
    if x.shape[0]:
        assert _relerr(y, ref) <= tol, (kern.name, _relerr(y, ref))


@pytest.mark.skipif(not NumbaLowbitKernel.available(), reason="numba not installed")
@pytest.mark.parametrize("qname", QTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.granularity}{l.group or ''}")
def test_numba_weight_only_matches_reference(qname, layout):
    # weight-only: the activation stays fp32, so only float summation order differs
    for n, k, m in SHAPES:
        qt = _qt(qname, layout, n, k)
        x = _x(m, k)
        kern = NumbaLowbitKernel.from_qtensor(qt)
        _check(kern, qt, x, reference_linear(qt, x), 1e-5)


@pytest.mark.skipif(not NumbaDequantKernel.available(), reason="numba not installed")
@pytest.mark.parametrize("qname", QTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.granularity}{l.group or ''}")
def test_numba_dequant_weight_bias_and_input_scale(qname, layout):
    # the whole-weight dequantisation is the reference's weight; bias and input scale as the layer applies them
    for n, k, m in SHAPES:
        qt = _qt(qname, layout, n, k)
        kern = NumbaDequantKernel.from_qtensor(qt)
        torch.testing.assert_close(kern.weight(), qt.dequantize(), rtol=1e-6, atol=1e-6)
        x, bias, in_scale = _x(m, k), torch.randn(n), torch.rand(k) + 0.5
        y = kern(x, bias, in_scale)
        assert y.shape == (m, n)
        if m:
            assert _relerr(y, reference_linear(qt, x * in_scale) + bias) <= 1e-5


def _hqq(bits: int, group: int | None):
    """An HQQ weight: unsigned codes, fp16 scales and fractional fp16 zero points."""
    import bitladder

    torch.manual_seed(3)
    cfg = bitladder.Int(bits, group=group, granularity="group" if group else "channel", symmetric=False,
                        method=bitladder.HQQ())
    return bitladder.quantize(torch.nn.Linear(192, 40), cfg).qweight


@pytest.mark.skipif(not NumbaDequantKernel.available(), reason="numba not installed")
@pytest.mark.parametrize("bits,group", [(4, 32), (3, 64), (8, None), (2, 32)])
def test_fractional_zero_points_run_on_the_numba_kernels(bits, group):
    qt = _hqq(bits, group)
    assert qt.zero_point.is_floating_point() and bool((qt.zero_points() != qt.zero_points().round()).any())
    torch.testing.assert_close(NumbaDequantKernel.from_qtensor(qt).weight(), qt.dequantize(), rtol=1e-6, atol=1e-6)
    for m in (1, 5):
        x = _x(m, 192)
        _check(NumbaLowbitKernel.from_qtensor(qt), qt, x, reference_linear(qt, x), 1e-5)
    # kernels whose offsets are integer codes refuse them; auto takes the numba ones instead of dequant-fp32
    assert not OrtNBitsKernel.applies(qt) and not Fp16CodesKernel.applies(qt)
    if c_module() is not None:
        assert not KERNELS["c-lowbit-a8"].applies(qt)
    assert choose(qt, 1, "auto").startswith("numba") and choose(qt, 300, "auto").startswith("numba-dequant")


@pytest.mark.skipif(not NumbaLowbitKernel.available(), reason="numba not installed")
def test_numba_gemv_and_tile_paths_agree():
    qt = _qt("int3", Layout("group", group=64), 70, 192)
    kern = NumbaLowbitKernel.from_qtensor(qt)
    x = _x(kern.tile_from_batch, 192)
    tiled = kern(x)
    rows = torch.cat([kern(x[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(tiled, rows, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not NumbaLowbitKernel.available(), reason="numba not installed")
def test_numba_exact_on_integer_activations():
    # integer x and unit scales: every partial sum is an exactly representable integer
    qt = _qt("int4", Layout("group", group=32), 21, 96)
    qt.scale.fill_(1.0)
    x = torch.randint(-3, 4, (2, 96)).float()
    assert torch.equal(NumbaLowbitKernel.from_qtensor(qt)(x), reference_linear(qt, x))


@pytest.mark.skipif(not XnorKernel.available(), reason="numba not installed")
@pytest.mark.parametrize("layout", [Layout("channel"), Layout("group", group=64), Layout("group", group=128)],
                         ids=["channel", "g64", "g128"])
@pytest.mark.parametrize("backend", ["numba", "c"])
def test_xnor_popcount_exact(layout, backend):
    if backend == "c" and c_module() is None:
        pytest.skip("C kernels not built (no compiler)")
    for n, k, m in SHAPES + [(9, 1000, 2), (300, 4096, 1)]:  # the last one big enough for threads
        qt = _qt("binary", layout, n, k)
        qt.scale.fill_(1.0)  # then the output is beta * an exact integer
        x = _x(m, k)
        y = XnorKernel.from_qtensor(qt, backend)(x)
        signs = torch.where(x >= 0, 1.0, -1.0)
        dots = (signs.double() @ qt.dequantize().double().T)  # exact integers
        beta = x.abs().mean(dim=1, keepdim=True).double()
        assert y.shape == (m, n)
        if m:
            torch.testing.assert_close(y.double() / beta, dots, rtol=2e-6, atol=1e-4)  # beta summed in another order
            _check(XnorKernel.from_qtensor(_qt("binary", layout, n, k), backend), qt, x,
                   reference_linear(_qt("binary", layout, n, k), XnorKernel.binarize(x)), 1e-5)


def test_xnor_rejects_non_binary_and_odd_groups():
    with pytest.raises(KernelUnsupported):
        XnorKernel.from_qtensor(_qt("int2", Layout("channel"), 4, 64))
    with pytest.raises(KernelUnsupported):
        XnorKernel.from_qtensor(_qt("binary", Layout("group", group=32), 4, 128))
    with pytest.raises(KernelUnsupported, match="accepted numba"):
        XnorKernel.from_qtensor(_qt("binary", Layout("channel"), 4, 128), backend="cuda")


@pytest.mark.skipif(not FbgemmW8A8Kernel.available(), reason="no fbgemm engine")
@pytest.mark.parametrize("layout", [Layout("channel"), Layout("tensor")], ids=["channel", "tensor"])
def test_fbgemm_w8a8_close_to_reference(layout):
    for n, k, m in SHAPES:
        qt = _qt("int8", layout, n, k)
        x = _x(m, k)
        # the activation is quantised to 7 bits per tensor: ~1 % error
        _check(FbgemmW8A8Kernel.from_qtensor(qt), qt, x, reference_linear(qt, x), 3e-2)
    with pytest.raises(KernelUnsupported):
        FbgemmW8A8Kernel.from_qtensor(_qt("int4", Layout("channel"), 4, 64))
    with pytest.raises(KernelUnsupported):
        FbgemmW8A8Kernel.from_qtensor(_qt("int8", Layout("group", group=32), 4, 64))


@pytest.mark.skipif(not FbgemmW8A8Kernel.available(), reason="no fbgemm engine")
def test_fbgemm_per_token_close_to_reference():
    for n, k, m in SHAPES:
        qt = _qt("int8", Layout("channel"), n, k)
        x = _x(m, k)
        _check(FbgemmW8A8TokenKernel.from_qtensor(qt), qt, x, reference_linear(qt, x), 3e-2)


@pytest.mark.skipif(not FbgemmW8A8Kernel.available(), reason="no fbgemm engine")
@pytest.mark.parametrize("block", [1, 8, 32])
def test_per_token_rotated_rows_in_c_are_the_tensor_operations_bits(block):
    from bitladder.kernels import hadamard

    if not hadamard.installed():
        pytest.skip("the C kernels were not built")
    qt = _qt("int8", Layout("channel"), 24, 96)
    kern, x = FbgemmW8A8TokenKernel.from_qtensor(qt), _x(18, 96) * 5
    fused = kern.prepare_rotated(x, block)
    apart = kern.prepare(hadamard.butterflies(x, block), None)  # rotate, then the kernel's own tensor operations
    assert kern.rotates and all(torch.equal(a, b) for a, b in zip(fused, apart))
    assert torch.equal(kern.finish(fused, None), kern.finish(apart, None))


@pytest.mark.skipif(not FbgemmW8A8Kernel.available(), reason="no fbgemm engine")
@pytest.mark.parametrize("scaled", [False, True])
def test_fbgemm_per_token_rows_in_c_are_the_tensor_operations_bits(scaled):
    from bitladder.kernels import hadamard

    if not hadamard.installed():
        pytest.skip("the C kernels were not built")
    qt = _qt("int8", Layout("channel"), 24, 96)
    kern, x = FbgemmW8A8TokenKernel.from_qtensor(qt), _x(18, 96) * 5
    s = torch.rand(96, generator=torch.Generator().manual_seed(2)) + 0.5 if scaled else None
    fused, apart = kern.prepare(x, s), hadamard.rows_reference(x, 1, s)  # the C call, the path without it
    assert all(torch.equal(a, b) for a, b in zip(fused, apart))
    assert torch.equal(kern.finish(fused, None), kern.finish(apart, None))


@pytest.mark.skipif(not OnednnW8A8Kernel.available(), reason="no oneDNN quantized linear in this torch")
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("block", [1, 8, 64])
def test_onednn_per_token_codes_in_c_are_the_tensor_operations_bits(scaled, block):
    from bitladder.kernels import hadamard

    if not hadamard.installed():
        pytest.skip("the C kernels were not built")
    qt = _qt("int8", Layout("channel"), 24, 192)
    kern, x = OnednnW8A8TokenKernel.from_qtensor(qt), _x(40, 192) * 5
    s = torch.rand(192, generator=torch.Generator().manual_seed(2)) + 0.5 if scaled else None
    if block == 1:  # the C prepare against the kernel's tensor operations (its path without the C build)
        fused, apart = kern.prepare(x, s), hadamard.token_reference(x, 1, kern.levels, s)
    else:  # rotated in C against rotate-then-prepare
        fused, apart = kern.prepare_rotated(x * s if scaled else x, block), kern.prepare(
            hadamard.butterflies(x * s if scaled else x, block), None)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(fused, apart))
    assert torch.equal(kern.finish(fused, None), kern.finish(apart, None))


@pytest.mark.parametrize("token, tensor", [(FbgemmW8A8TokenKernel, FbgemmW8A8Kernel),
                                           (OnednnW8A8TokenKernel, OnednnW8A8Kernel)], ids=["fbgemm", "onednn"])
def test_per_token_keeps_small_rows_and_zero_rows(token, tensor):
    if not tensor.available():
        pytest.skip(f"{tensor.name}: backend not in this torch")
    # rows 10^6 apart in magnitude: one scale per call flattens the small rows to zero, one per token does not
    qt = _qt("int8", Layout("channel"), 24, 96)
    x = _x(6, 96) * torch.tensor([1e3, 1e-3, 1.0, 1e3, 1e-3, 0.0])[:, None]
    ref = reference_linear(qt, x)
    small = [1, 4]
    tok = token.from_qtensor(qt)(x)
    ten = tensor.from_qtensor(qt)(x)
    assert _relerr(tok[small], ref[small]) < 3e-2 < _relerr(ten[small], ref[small])
    assert torch.equal(tok[5], torch.zeros(24))  # an all-zero row stays exactly zero


@pytest.mark.parametrize("token, tensor", [(FbgemmW8A8TokenKernel, FbgemmW8A8Kernel),
                                           (OnednnW8A8TokenKernel, OnednnW8A8Kernel)], ids=["fbgemm", "onednn"])
def test_per_token_bias_sum_and_a_trained_bias(token, tensor):
    """The row scale and bias are applied over the GEMM's own output; a bias that is being trained still
    gets its gradient (autograd cannot record that in-place form, so it gets a new tensor)."""
    if not tensor.available():
        pytest.skip(f"{tensor.name}: backend not in this torch")
    qt = _qt("int8", Layout("channel"), 24, 96)
    kern, x = token.from_qtensor(qt), _x(300, 96)
    bias = torch.randn(24)
    assert torch.allclose(kern(x, bias), kern(x) + bias, atol=1e-5)
    trained = bias.clone().requires_grad_(True)
    y = kern(x, trained)
    y.sum().backward()
    assert torch.allclose(y.detach(), kern(x, bias), atol=1e-5)
    assert torch.equal(trained.grad, torch.full((24,), 300.0))
    with torch.no_grad():
        assert torch.allclose(kern(x, trained), kern(x, bias), atol=1e-5)


@pytest.mark.skipif(not OrtNBitsKernel.available(), reason="onnxruntime not installed")
@pytest.mark.parametrize("qname", ["int8", "uint8", "int4", "uint4", "int3", "int2", "uint2", "ternary", "binary"])
def test_ort_nbits_close_to_reference(qname):
    for layout in (Layout("group", group=64), Layout("group", group=32), Layout("channel")):
        for n, k, m in SHAPES:
            qt = _qt(qname, layout, n, k)
            x = _x(m, k)
            # int8 activations per block: ~1 % error
            _check(OrtNBitsKernel.from_qtensor(qt, threads=1), qt, x, reference_linear(qt, x), 3e-2)


@pytest.mark.skipif(not OrtNBitsKernel.available(), reason="onnxruntime not installed")
@pytest.mark.parametrize("qname", ["int4", "uint4", "int3", "uint3", "int2", "uint2", "ternary", "binary"])
def test_ort_nbits_fp32_activations_are_exact_weight_only(qname):
    """fp32 activations: the reference within float rounding, where the int8-activation path is ~1 % off."""
    for layout in (Layout("group", group=64), Layout("group", group=32), Layout("channel"), Layout("tensor")):
        for n, k, m in SHAPES + [(24, 256, 40)]:
            qt = _qt(qname, layout, n, k)
            kern = OrtNBitsFp32Kernel.from_qtensor(qt, threads=1)
            assert kern.name == "ort-w4-fp32"  # every width of 4 bits or fewer is stored as 4-bit blocks
            _check(kern, qt, _x(m, k), reference_linear(qt, _x(m, k)), 1e-5)
    with pytest.raises(KernelUnsupported):
        OrtNBitsFp32Kernel.from_qtensor(_qt("int8", Layout("channel"), 8, 64))


@pytest.mark.parametrize("qname", QTYPES)
def test_fp16_codes_are_exact_weight_only(qname):
    """Integer codes are exact in fp16: fbgemm's fp16-weight GEMM times the channel scale is the reference
    to fp32 rounding, for every integer-like format with channel or tensor scales."""
    if not Fp16CodesKernel.available():
        pytest.skip("torch has no fbgemm fp16 linear")
    for layout in (Layout("channel"), Layout("tensor")):
        for n, k, m in SHAPES:
            qt = _qt(qname, layout, n, k)
            _check(Fp16CodesKernel.from_qtensor(qt), qt, _x(m, k), reference_linear(qt, _x(m, k)), 1e-5)
    assert not Fp16CodesKernel.applies(_qt(qname, Layout("group", group=32), 8, 64))  # group scales: no
    with pytest.raises(KernelUnsupported, match="float codes fp16 holds exactly"):
        Fp16CodesKernel.from_qtensor(_qt("bf16", Layout("tensor"), 8, 64))  # bf16's exponents reach below fp16's


@pytest.mark.parametrize("qname", ["fp16", "fp8_e4m3", "fp8_e5m2"])
def test_float_codes_fp16_holds_run_exact_on_the_fp16_gemm(qname):
    """fp16 and both fp8 formats are exact in fp16: the weight is not dequantised per call, auto takes the fp16 GEMM
    at every row count (fp8's dequantisation every call ran MiniLM at one sentence below fp32), and it holds 2
    bytes a weight."""
    if not Fp16CodesKernel.available():
        pytest.skip("torch has no fbgemm fp16 linear")
    for layout in (Layout("channel"), Layout("tensor")):
        for n, k, m in SHAPES:
            qt = _qt(qname, layout, n, k)
            kern = Fp16CodesKernel.from_qtensor(qt)
            _check(kern, qt, _x(m, k), reference_linear(qt, _x(m, k)), 1e-5)
            assert kern.nbytes <= n * k * 2 + n * 4
    qt = _qt(qname, Layout("channel"), 96, 256)  # above SMALL_WEIGHTS
    # to four rows the C GEMV widening in registers (where built, with AVX2); fbgemm's GEMM from there
    few = ("c-fp16-gemv" if qname == "fp16" else "c-fp8-gemv") if Fp16GemvKernel.available() and current().has(
        "avx2") else None
    assert choose(qt, 1) == (few or "fbgemm-fp16-codes")
    assert all(choose(qt, m) == "fbgemm-fp16-codes" for m in (5, 18, 64))
    assert candidates(_qt("bf16", Layout("tensor"), 32, 256), 1) == ["bf16-fp32", "dequant-fp32"]


def test_small_weights_that_dequantise_cheaply_skip_the_fp16_gemm():
    """fbgemm's fp16 GEMM has a fixed cost a call whatever the size: weights of SMALL_WEIGHTS elements or fewer run
    dequantised every call (integer codes in C, fp16 by a cast, fp8 by the C cast where built: torch's is slow) at
    every batch, by choice, not as the fallback. The outputs stay the exact weights' to fp32 rounding."""
    if not Fp16CodesKernel.available():
        pytest.skip("torch has no fbgemm fp16 linear")
    side = int(SMALL_WEIGHTS ** 0.5)
    for m in (18, 450):  # above the rows the one-row GEMV takes
        for n, k in ((10, 64), (side, side)):
            int8, fp16, fp8 = (_qt(q, Layout("channel"), n, k) for q in ("int8", "fp16", "fp8_e4m3"))
            if c_module() is not None:
                assert choose(int8, m) == "numba-dequant-fp32"
            assert choose(fp16, m) == "cast-fp32" and not on_fallback("cast-fp32")
            assert choose(fp8, m) == ("cast-fp32" if c_module() is not None else "fbgemm-fp16-codes")
            for qt in (int8, fp16, fp8):
                x = _x(m, k)
                _check(KERNELS[choose(qt, m)].from_qtensor(qt), qt, x, reference_linear(qt, x), 1e-5)
        for q in ("int8", "fp16"):
            assert choose(_qt(q, Layout("channel"), side + 1, side), m) == "fbgemm-fp16-codes"
        # 7-bit codes dequantise plane by plane in numba (a compile on first use): they keep the fp16 GEMM
        assert choose(_qt("int7", Layout("channel"), 10, 64), m) == "fbgemm-fp16-codes"


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_fp16_codes_stop_at_512_rows_for_integer_codes_where_mkl_is_ahead(vendor):
    """On an Intel core MKL's sgemm outruns fbgemm's fp16 GEMM at batch, so past 512 rows integer codes go to the
    C dequantisation + fp32 GEMM; float codes (fp8's dequantisation is slow) and other vendors keep fbgemm's."""
    cpu = dataclasses.replace(current({"BITLADDER_CPU": "avx512"}), vendor=vendor)
    if not cpu.has("avx512f"):
        pytest.skip("this host has no AVX-512 (without it every vendor stops at 512 rows)")
    ahead = vendor in MKL_AHEAD
    assert Fp16CodesKernel.rows(cpu, _qt("uint8", Layout("channel"), 96, 256)) == ((1, 512) if ahead else ANY_ROWS)
    assert Fp16CodesKernel.rows(cpu, _qt("fp8_e4m3", Layout("channel"), 96, 256)) == ANY_ROWS
    assert Fp16CodesKernel.rows(cpu) == ANY_ROWS  # no weight given: the declared range
    int8 = _qt("int8", Layout("channel"), 96, 256)
    assert choose(int8, 512, cpu=cpu) == "fbgemm-fp16-codes"
    assert choose(int8, 513, cpu=cpu) == ("numba-dequant-fp32" if ahead else "fbgemm-fp16-codes")


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_16_bit_floats_past_512_rows_cast_for_mkl_where_it_is_ahead_unless_the_weight_is_large(vendor, fmt):
    """Past 512 rows on an Intel core a cast per call and MKL's GEMM outrun fbgemm's fp16 GEMM, for weights whose
    fp32 copy is moderate (CAST_MAX); a larger weight and other vendors keep fbgemm's."""
    cpu = dataclasses.replace(current({"BITLADDER_CPU": "avx512"}), vendor=vendor)
    if not (cpu.has("avx512f") and Fp16CodesKernel.installed()):
        pytest.skip("this host has no AVX-512 or no fbgemm (without AVX-512 every vendor stops at 512 rows)")
    ahead = vendor in MKL_AHEAD
    fbgemm = "fbgemm-fp16-codes" if fmt == "fp16" else "fbgemm-bf16-scaled"
    qt = _qt(fmt, Layout("tensor"), 256, 384)
    assert choose(qt, 512, cpu=cpu) == fbgemm
    assert choose(qt, 513, cpu=cpu) == ("cast-fp32" if ahead else fbgemm)
    big = QuantizedTensor.from_float(torch.zeros(CAST_MAX // 1024 + 1, 1024), fmt, Layout("tensor"), sparse=False)
    assert CastKernel.rows(cpu, big) is None
    x = _x(600, 384)
    torch.testing.assert_close(CastKernel.from_qtensor(qt)(x), reference_linear(qt, x), rtol=0, atol=0)


def test_without_the_c_kernels_auto_keeps_exact_numerics_above_small_requests():
    # a CPU without AVX2 runs no C kernel: int8 activations (MatMulNBits) to 16 rows, then exact float ones
    cpu = current({"BITLADDER_CPU": "default"})
    ORT_MAX_ROWS, ORT_FP32_MAX_ROWS = OrtNBitsKernel.auto_rows[1], OrtNBitsFp32Kernel.auto_rows[1]

    if not OrtNBitsKernel.available():
        pytest.skip("onnxruntime not installed")
    # 40 rows: not the packed-int4 GEMM's multiple of 16, so MatMulNBits' fp32 path, then dequantisation
    int4, int8 = _qt("int4", Layout("group", group=64), 40, 256), _qt("int8", Layout("channel"), 96, 256)
    assert choose(int4, ORT_MAX_ROWS, cpu=cpu) == "ort-nbits"
    assert choose(int4, ORT_MAX_ROWS + 1, cpu=cpu) == "ort-nbits-fp32"
    # large batches: the dequantisation amortises (one numba pass where numba is installed)
    assert choose(int4, ORT_FP32_MAX_ROWS + 1, cpu=cpu) == ("numba-dequant-fp32" if NumbaLowbitKernel.available()
                                                            else "dequant-fp32")
    packable = _qt("int4", Layout("group", group=64), 32, 256)
    # the packed-int4 GEMM rounds activations, scales and output to bf16: never auto, on any CPU
    assert choose(packable, ORT_MAX_ROWS + 1, cpu=cpu) == "ort-nbits-fp32"
    for level in ("default", "avx2", "native"):
        assert all("torch-int4pack-bf16" not in candidates(packable, m, current({"BITLADDER_CPU": level}))
                   for m in (1, ORT_MAX_ROWS + 1, 5000))
    if Int4PackBf16Kernel.available():
        assert choose(packable, 64, "torch-int4pack-bf16") == "torch-int4pack-bf16"  # named, it runs
    # one scale per output channel: the codes themselves as fp16 weights, at any batch above 16 rows
    # (where torch has fbgemm: not without AVX2, where MatMulNBits' fp32 path and the dequantisation stay)
    fp16 = Fp16CodesKernel.available(cpu)
    assert choose(_qt("binary", Layout("channel"), 96, 256), 64, cpu=cpu) == ("fbgemm-fp16-codes" if fp16
                                                                              else "ort-nbits-fp32")
    if fp16:
        assert choose(int8, 64) == "fbgemm-fp16-codes"  # 8-bit codes on every CPU (above 512 rows with AVX-512)


def test_with_the_c_kernels_codes_of_4_bits_or_fewer_keep_one_activation_grid():
    from bitladder.kernels.c_tiles import CTilesKernel

    cpu = current({"BITLADDER_CPU": "avx2"})
    if not (CTilesKernel.installed() and cpu.has("avx2")):
        pytest.skip("the C kernels are not built, or the host lacks AVX2")
    for fmt, layout in (("int4", Layout("group", group=64)), ("int3", Layout("group", group=128)),
                        ("uint4", Layout("group", group=32)), ("ternary", Layout("channel")),
                        ("binary", Layout("channel"))):
        qt = _qt(fmt, layout, 40, 256)
        # every kernel auto picks here quantises activations to int8 per block of gcd(group, 128)
        assert all(choose(qt, m, cpu=cpu) in ("c-lowbit-tiles", "c-2bit-lut", "c-binary-lut")
                   for m in (1, 2, 17, 33, 513, 5000)), fmt
    assert choose(_qt("int4", Layout("group", group=64), 40, 256), 64, "ort-nbits") == "ort-nbits"  # named, it runs


def test_unsupported_inputs():
    with pytest.raises(KernelUnsupported):
        NumbaLowbitKernel.from_qtensor(_qt("fp8_e4m3", Layout("channel"), 4, 64))
    with pytest.raises(KernelUnsupported):
        NumbaLowbitKernel.from_qtensor(_qt("int4", Layout("group", group=12), 4, 64))
    kern = DequantKernel.from_qtensor(_qt("int4", Layout("channel"), 4, 64))
    with pytest.raises(ValueError):
        kern(torch.zeros(2, 63))


@pytest.mark.parametrize("qname", ["int8", "int4", "int3", "int2", "uint4", "ternary", "binary", "int6"])
@pytest.mark.parametrize("m", [1, 64])
def test_selected_kernel_builds_and_is_close(qname, m):
    qt = _qt(qname, Layout("group", group=64) if qname not in ("ternary", "binary", "int8") else Layout("channel"),
             48, 256)
    name = choose(qt, m)
    assert name in KERNELS
    kern = build_kernel(qt, m)
    x = _x(m, 256)
    ref = reference_linear(qt, XnorKernel.binarize(x) if name == "binary-xnor" else x)
    _check(kern, qt, x, ref, 3e-2)


def test_selection_falls_back_when_unsupported():
    assert choose(_qt("bf16", Layout("tensor"), 64, 64), 1) == "bf16-fp32"  # widened in registers, never whole
    assert choose(_qt("int4", Layout("group", group=12), 64, 60), 1) == "dequant-fp32"
