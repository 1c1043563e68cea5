"""bf16, fp16 and fp8 weights x fp32 activations: the C GEMV's paths agree bit for bit, and the kernels compute the
float layer's products on the stored values at every row count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitladder.kernels import Bf16Fp16Kernel, Bf16Kernel, Fp8GemvKernel, Fp16GemvKernel, KernelUnsupported
from bitladder.kernels.bf16_fp32 import GEMV_ROWS
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.cpu import current
from bitladder.kernels.fp16_codes import MKL_AHEAD
from bitladder.kernels.select import choose
from bitladder.tensor.quantized import QuantizedTensor

needs_c = pytest.mark.skipif(c_module() is None, reason="C kernels not built (no compiler)")


KERNELS16 = {"bf16": Bf16Kernel, "fp16": Fp16GemvKernel, "fp8_e4m3": Fp8GemvKernel, "fp8_e5m2": Fp8GemvKernel}


def _qt(n: int, k: int, seed: int = 0, fmt: str = "bf16") -> QuantizedTensor:
    torch.manual_seed(seed)
    return QuantizedTensor.from_float(torch.randn(n, k), fmt)


@needs_c
@pytest.mark.parametrize("fmt", sorted(KERNELS16))
@pytest.mark.parametrize("n,k", [(37, 1003), (64, 4096), (5, 16), (9, 7)])
def test_gemv_paths_agree_bit_for_bit(n, k, fmt):
    kern = KERNELS16[fmt].from_qtensor(_qt(n, k, fmt=fmt))
    for m in range(1, GEMV_ROWS + 1):
        x = torch.randn(m, k).numpy()
        got = []
        for simd in (0, 1, 2):  # portable (fmaf), AVX2, AVX-512 where the host has them
            for threads in (1, 2):
                y = np.empty((m, n), np.float32)
                c_module().wide16(kern.w, x, y, m, n, k, kern.code, simd, threads)
                got.append(y)
        assert all(np.array_equal(got[0], g) for g in got[1:]), m


@pytest.mark.parametrize("fmt", sorted(KERNELS16))
@pytest.mark.parametrize("m", [1, 3, GEMV_ROWS, GEMV_ROWS + 1, 70])  # past the GEMV: panels for the fp32 GEMM
def test_the_float_layers_products_on_the_stored_values(m, fmt):
    qt = _qt(300, 1000, seed=1, fmt=fmt)
    kern = KERNELS16[fmt].from_qtensor(qt)
    w = qt.dequantize(torch.float32)
    x, bias = torch.randn(m, 1000), torch.randn(300)
    want = F.linear(x.double(), w.double(), bias.double())
    got = kern(x, bias)
    assert got.shape == (m, 300) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert kern.nbytes == 300 * 1000 * (1 if fmt.startswith("fp8") else 2) + (300 * 4 if fmt.startswith("fp8") else 0)
    assert kern(torch.randn(0, 1000)).shape == (0, 300)


def test_auto_takes_the_gemv_for_bf16s_at_a_few_rows_fbgemm_past_them_and_fp16s_gemv_at_a_few():
    c = c_module() is not None
    assert all((choose(_qt(128, 256), m) == "bf16-fp32") == c for m in (1, GEMV_ROWS))
    past = "fbgemm-bf16-scaled" if Bf16Fp16Kernel.installed() else "bf16-fp32"
    assert all(choose(_qt(128, 256), m) == past for m in (GEMV_ROWS + 1, 64, 512))
    cpu = current()  # past 512 rows: a cast for MKL where it is ahead of fbgemm, or where fbgemm stops
    assert choose(_qt(128, 256), 1024) == ("cast-fp32" if cpu.vendor in MKL_AHEAD or not cpu.has("avx512f") else past)
    assert choose(_qt(64, 256), 64) == "bf16-fp32"  # a small weight: one cast, then the fp32 GEMM
    with pytest.raises(KernelUnsupported, match="2-D bf16"):
        Bf16Kernel.from_qtensor(QuantizedTensor.from_float(torch.randn(8, 64), "fp16"))
    fp16 = _qt(256, 256, fmt="fp16")
    for level in ("avx2", "avx512", "default"):
        cpu = current({"BITLADDER_CPU": level})
        few = Fp16GemvKernel.installed() and cpu.has("avx2")  # the portable path is for correctness only
        assert all((choose(fp16, m, cpu=cpu) == "c-fp16-gemv") == few for m in (1, GEMV_ROWS))
        assert choose(fp16, GEMV_ROWS + 1, cpu=cpu) != "c-fp16-gemv"


@needs_c
def test_the_c_entry_refuses_more_rows_than_it_takes():
    kern = Bf16Kernel.from_qtensor(_qt(8, 64))
    x, y = np.zeros((GEMV_ROWS + 1, 64), np.float32), np.zeros((GEMV_ROWS + 1, 8), np.float32)
    with pytest.raises(ValueError, match="more than 4 rows"):
        c_module().wide16(kern.w, x, y, GEMV_ROWS + 1, 8, 64, 0, 2, 1)


def test_the_path_follows_the_cpu_level(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "native")
    host = Bf16Kernel.from_qtensor(_qt(8, 64)).simd
    for level, path in {"default": 0, "avx2": 1, "avx512": 2}.items():
        monkeypatch.setenv("BITLADDER_CPU", level)
        assert Bf16Kernel.from_qtensor(_qt(8, 64)).simd == min(path, host)


@pytest.mark.parametrize("fmt,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_every_fp8_code_widens_to_its_value(fmt, dtype):
    """Each byte (subnormals, zeros of both signs, the largest values; not NaN) in a weight row, read out one at a
    time by one-hot activations: the GEMV (e4m3 read at 2^-8 and scaled back) gives each code's exact value."""
    codes = torch.arange(256, dtype=torch.uint8)
    values = codes.view(dtype).float()
    keep = torch.isfinite(values)
    qt = QuantizedTensor.from_float(torch.randn(1, int(keep.sum())), fmt)  # its codes and scale replaced below
    kern = Fp8GemvKernel.from_qtensor(qt)
    kern.wt = codes[keep].view(dtype).reshape(1, -1).contiguous()
    kern.w = kern.wt.view(torch.uint8).numpy()
    kern._scale = torch.ones(1)
    kern._c_scale = kern._scale * (256 if fmt == "fp8_e4m3" else 1)
    eye = torch.eye(kern.k)
    got = torch.cat([kern(eye[i: i + GEMV_ROWS]) for i in range(0, kern.k, GEMV_ROWS)]).reshape(-1)
    assert torch.equal(got, values[keep])
