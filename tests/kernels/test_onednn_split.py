"""Weight-only int8 on oneDNN's integer GEMM: the activation pieces (C and reference alike) rebuild each row to
fp32's step at its absmax, the kernel equals its integer arithmetic, and auto takes it only where the GEMM adds
into 32 bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.layout import Layout
from bitladder.kernels import KernelUnsupported, hadamard
from bitladder.kernels.base import weight_parts
from bitladder.kernels.cpu import current
from bitladder.kernels.onednn_split import SUB, OnednnSplitKernel, split_codes, split_reference, split_sum
from bitladder.kernels.select import candidates, choose
from bitladder.tensor.quantized import QuantizedTensor


def _qt(n: int, k: int, qname: str = "int8", layout: Layout = Layout("channel"), seed: int = 0) -> QuantizedTensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return QuantizedTensor.from_float(w, qname, layout, symmetric=True)


def _x(m: int, k: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    x[:, k // 3] *= 40  # an outlier channel, as in transformer activations: it sets every row's step
    return x


def _rebuilt(q: torch.Tensor, r: torch.Tensor, pieces: int) -> torch.Tensor:
    m = r.shape[0]
    a = q.double() - 128
    return sum(a[p * m: (p + 1) * m] / SUB ** p for p in range(pieces)) * r.double()


@given(m=st.integers(1, 9), k=st.integers(1, 100), pieces=st.integers(1, 4), simd=st.booleans(),
       seed=st.integers(0, 2**16), zero_row=st.booleans())
@settings(max_examples=60, deadline=None)
def test_c_pieces_have_the_reference_bits_and_rebuild_the_row(m, k, pieces, simd, seed, zero_row):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g).mul(100)
    if zero_row:
        x[0] = 0.0
    q, r = split_codes(x, pieces, simd)
    want_q, want_r = split_reference(x, pieces)
    assert torch.equal(q, want_q) and torch.equal(r, want_r)
    assert int(q.min()) >= 1 and int(q.max()) <= 255  # pieces in [-127, 127]: never the zero point's far side
    # each piece leaves half a step of the next: 127 * 254^(pieces - 1) steps over the row's absmax
    bound = 0.5 / (127 * SUB ** (pieces - 1)) * (1 + 1e-5) + 2 ** -24
    err = (_rebuilt(q, r, pieces) - x.double()).abs().amax(1) / x.abs().amax(1).double().clamp(min=1e-30)
    assert float(err.max()) <= bound


@given(m=st.integers(1, 7), n=st.integers(1, 70), pieces=st.integers(1, 4), simd=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_c_sum_of_the_pieces_equals_horner_in_pytorch(m, n, pieces, simd, bias, seed):
    g = torch.Generator().manual_seed(seed)
    y, r = torch.randn(pieces * m, n, generator=g) * 1000, torch.rand(m, 1, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    want = y[(pieces - 1) * m:].double()
    for p in range(pieces - 2, -1, -1):
        want = y[p * m: (p + 1) * m].double() + want / SUB
    want = want * r.double() + (0 if b is None else b.double())
    got = split_sum(y.clone(), r, b, pieces, simd)
    assert got.shape == (m, n)
    assert float((got.double() - want).abs().max()) <= 4e-7 * float(want.abs().max()) + 1e-30
    if hadamard.installed():  # the C pass and the PyTorch one it replaces agree to fp32 rounding
        with torch.enable_grad():
            b2 = None if b is None else b.clone().requires_grad_()
            torch_path = split_sum(y.clone(), r, b2, pieces)  # a bias with a gradient takes the PyTorch ops
        assert torch.allclose(got, torch_path.detach(), rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_c_pass_refuses_bad_buffers():
    if not hadamard.installed():
        pytest.skip("the C extension was not built")
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="pieces"):
        hadamard._hadamard.split_codes(x.numpy(), torch.empty(4, 8, dtype=torch.uint8).numpy(),
                                       torch.empty(4).numpy(), 4, 8, 2, 1, 1)  # room for one piece only
    with pytest.raises(ValueError, match="pieces"):
        hadamard._hadamard.split_codes(x.numpy(), torch.empty(40, 8, dtype=torch.uint8).numpy(),
                                       torch.empty(4).numpy(), 4, 8, 5, 1, 1)
    with pytest.raises(ValueError, match="pieces"):  # the GEMM output of two pieces, summed as three
        hadamard._hadamard.split_sum(torch.empty(8, 8).numpy(), torch.empty(4).numpy(), torch.empty(0).numpy(),
                                     4, 8, 3, 1, 1)


needs_vnni = pytest.mark.skipif(not (OnednnSplitKernel.installed() and current().dot32("onednn")),
                                reason="oneDNN's u8 x s8 GEMM adds into 32 bits only with VNNI or AMX")


@needs_vnni
@pytest.mark.parametrize("layout", [Layout("channel"), Layout("tensor")], ids=["channel", "tensor"])
@pytest.mark.parametrize("m,k,n", [(64, 384, 300), (37, 200, 3), (130, 1536, 64), (1, 96, 8)])
def test_equals_its_integer_arithmetic_and_fp32_to_its_rounding(layout, m, k, n):
    qt, x, bias = _qt(n, k, layout=layout), _x(m, k), torch.randn(n)
    kernel = OnednnSplitKernel.from_qtensor(qt)
    y = kernel(x, bias)
    codes, scale, _, _ = weight_parts(qt)
    q, r = split_reference(x, kernel.pieces)
    ints = (q.double() - 128) @ codes.double().T  # exact: 2^31 is far off
    pieces = sum(ints[p * m: (p + 1) * m] / SUB ** p for p in range(kernel.pieces))
    want = pieces * r.double() * scale[:, 0].double() + bias.double()
    assert float((y.double() - want).abs().max() / want.abs().max()) < 1e-6
    # against the dequantised layer in float64: no worse than fp32's own F.linear by more than its step
    exact = F.linear(x.double(), qt.dequantize(torch.float32).double(), bias.double())
    fp32 = F.linear(x, qt.dequantize(torch.float32), bias)
    ours, theirs = (y.double() - exact).abs().max(), (fp32.double() - exact).abs().max()
    assert float(ours) <= float(theirs) + 4 * 2 ** -24 * k * float(x.abs().max() * qt.dequantize().abs().max())


@needs_vnni
def test_input_scale_and_empty_batch():
    qt, x, s = _qt(16, 64), _x(5, 64), torch.rand(64) + 0.5
    kernel = OnednnSplitKernel.from_qtensor(qt)
    assert torch.allclose(kernel(x, None, s), kernel(x * s), rtol=0, atol=0)
    assert kernel(torch.zeros(0, 64)).shape == (0, 16)


def test_refuses_what_it_cannot_take():
    for qname, layout in [("int4", Layout("channel")), ("int8", Layout("group", group=64))]:
        qt = _qt(8, 128, qname, layout)
        assert not OnednnSplitKernel.applies(qt)
        if OnednnSplitKernel.installed():
            with pytest.raises(KernelUnsupported, match="int8 symmetric per-channel"):
                OnednnSplitKernel.from_qtensor(qt)


def test_refuses_a_gemm_that_would_saturate(monkeypatch):
    if not OnednnSplitKernel.installed():
        pytest.skip("torch has no oneDNN quantized linear")
    monkeypatch.setenv("BITLADDER_CPU", "avx512")  # as on a CPU without VNNI: 16-bit pair sums
    with pytest.raises(KernelUnsupported, match="needs VNNI or AMX"):
        OnednnSplitKernel.from_qtensor(_qt(8, 64))


@pytest.mark.parametrize("level,offered", [("avx2", False), ("avx512", False), ("avx2-vnni", False),
                                           ("avx512-vnni", False), ("avx512-bf16", False), ("native", True)])
def test_auto_takes_it_at_batch_only_with_amx(level, offered):
    cpu = current({"BITLADDER_CPU": level})
    if not OnednnSplitKernel.installed() or offered and not cpu.has("amx"):
        pytest.skip(f"this host has no AMX (or torch no oneDNN)")
    qt = _qt(384, 384)
    assert ("int8-onednn-split" in candidates(qt, 1504, cpu)) == offered
    assert (choose(qt, 1504, cpu=cpu) == "int8-onednn-split") == offered
    assert choose(qt, 1, cpu=cpu) != "int8-onednn-split"  # one row: the GEMV reads the codes once
    # 2^25 multiply-adds at the least with a side under 512: 228 rows of 384 x 384, 22 of 4096 x 384; else 2^23
    assert OnednnSplitKernel.rows(cpu, qt)[0] == 228 and OnednnSplitKernel.rows(cpu, _qt(4096, 384))[0] == 22
    assert OnednnSplitKernel.rows(cpu, _qt(1024, 1024))[0] == 8 and OnednnSplitKernel.rows(cpu, _qt(2048, 4096))[0] == 3
    assert "int8-onednn-split" not in candidates(qt, 227, cpu)
    capped = current({"BITLADDER_CPU": level, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert "int8-onednn-split" not in candidates(qt, 1504, capped)  # oneDNN held below AMX
