"""Quantised Linear layers run on the kernels their policy picks, and agree with the reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitladder
from bitladder import BitladderError, Int
from bitladder.kernels import FbgemmW8A8Kernel, Int4PackBf16Kernel, OnednnW8A8Kernel, OrtNBitsKernel
from bitladder.kernels.c_lowbit import CLowbitKernel
from bitladder.kernels.c_tiles import CTilesKernel
from bitladder.kernels.cpu import current
from bitladder.kernels.select import onednn_min_rows
from bitladder.methods.quantize.methods import Act

needs_ort = pytest.mark.skipif(not OrtNBitsKernel.available(), reason="onnxruntime not installed")


def rel(a, b):
    return float((a - b).norm() / b.norm())


@needs_ort
@pytest.mark.parametrize("cfg, c_kernel", [(Int(8), None), (Int(4, group=64), "c-lowbit-tiles"),
                                           (Int(2, group=32), "c-2bit-lut"), (bitladder.Ternary(), "c-2bit-lut"),
                                           (Int(2, group=32, symmetric=False), "c-2bit-lut"),
                                           (bitladder.Binary(), "c-binary-lut")])
def test_auto_uses_a_low_bit_kernel_for_few_rows_and_matches_reference(cfg, c_kernel):
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    q = bitladder.quantize(lin, cfg)
    ref = bitladder.quantize(lin, type(cfg)(**{**cfg.__dict__, "kernel": "dequant-fp32"}))
    x = torch.randn(3, 256)
    y = q(x)
    # at three rows: a C kernel where they are built and the CPU has AVX2 (the lookup GEMV for 1- and 2-bit
    # codes, the batch GEMM for 3-4 bits), else MatMulNBits; 8-bit codes of this small layer take the GEMV with
    # VNNI, the exact fp16 codes on other AVX2 CPUs, MatMulNBits without AVX2
    cpu = current()
    c_built = CLowbitKernel.available() and CLowbitKernel.rows(cpu) is not None
    if c_kernel is None and cpu.has("avx2"):
        c_kernel, c_built = ("c-lowbit-a8", True) if c_built and cpu.has("avx512_vnni") else ("fbgemm-fp16-codes", True)
    assert q.kernel == c_kernel if c_kernel and c_built else q.kernel.startswith("ort-w")
    assert ref.kernel == "dequant-fp32"
    assert rel(y, ref(x)) < 0.02  # the kernel quantises activations per row and block to 8 bits


def test_many_rows_keep_one_activation_grid_where_the_c_kernels_run():
    torch.manual_seed(0)
    if not (CTilesKernel.available() and CTilesKernel.rows(current())):
        pytest.skip("the C kernels are not built, or this CPU (as BITLADDER_CPU presents it) lacks AVX2")
    q = bitladder.quantize(nn.Linear(64, 40), Int(4, group=32))
    x = torch.randn(600, 64)
    with torch.no_grad():
        for rows in (1, 4, 300, 600):
            y = q(x[:rows])
            assert q.kernel == "c-lowbit-tiles"
            # a row's result does not depend on the request it came in: the same bits alone or in a batch
            assert torch.equal(y[:1], q(x[:1]))
        assert rel(q(x), F.linear(x, q.weight(), q.bias)) < 0.02  # int8 activations per block of 32


@needs_ort
def test_many_rows_keep_exact_numerics_and_kernel_is_reported(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("BITLADDER_CPU", "default")  # no AVX2: no C kernels, exact float activations from 17 rows
    q = bitladder.quantize(nn.Linear(64, 40), Int(4, group=32))  # 40 outputs: not for the packed-int4 GEMM
    q(torch.randn(4, 64))
    assert q.kernel == "ort-w4a8"  # few rows: int8 activations per block
    x = torch.randn(300, 64)
    y = q(x)  # more rows: exact weight-only numerics, fp32 activations
    assert q.kernel == "ort-w4-fp32"
    with torch.no_grad():
        assert torch.allclose(y, F.linear(x, q.weight(), q.bias), atol=1e-5)
    q(torch.randn(600, 64))  # many rows: dequantising once per call amortises
    assert q.kernel in ("dequant-fp32", "numba-dequant-int4")  # one numba pass where numba is installed
    auto = bitladder.quantize(nn.Linear(64, 32), Int(4, group=32))  # packable, yet auto keeps the numerics
    x = torch.randn(300, 64)
    with torch.no_grad():
        assert torch.allclose(auto(x), F.linear(x, auto.weight(), auto.bias), atol=1e-5)
    assert auto.kernel != "torch-int4pack-bf16"
    if Int4PackBf16Kernel.available():  # named: torch's packed-int4 GEMM, bf16 activations, any batch
        packed = bitladder.quantize(nn.Linear(64, 32), Int(4, group=32, kernel="torch-int4pack-bf16"))
        for rows in (300, 600):
            x = torch.randn(rows, 64)
            y = packed(x)
            assert packed.kernel == "torch-int4pack-bf16"
            with torch.no_grad():
                assert rel(y, F.linear(x, packed.weight(), packed.bias)) < 5e-3
    odd = bitladder.quantize(nn.Linear(72, 32), Int(4, group=24))  # a group onnxruntime does not take
    odd(torch.randn(1, 72))
    assert odd.kernel == "numba-int4"
    odd(torch.randn(300, 72))  # numba's GEMV is for one row; many rows fall back
    assert odd.kernel == "numba-dequant-int4"  # the planes dequantised in one pass, then fp32


def test_named_kernel_and_dynamic_w8a8():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    q = bitladder.quantize(lin, Int(8, act=Act(dynamic=True)))
    x = torch.randn(20, 128)
    backend = "onednn" if OnednnW8A8Kernel.available() else "fbgemm"
    few = "fbgemm" if FbgemmW8A8Kernel.available() else backend  # torch has no fbgemm without AVX2
    assert rel(q(x), lin(x)) < 0.03 and q.kernel == f"int8-w8a8-{few}-token"
    many = torch.randn(onednn_min_rows(), 128)  # from here on oneDNN's GEMM, where torch has it
    assert rel(q(many), lin(many)) < 0.03 and q.kernel == f"int8-w8a8-{backend}-token"
    q = bitladder.quantize(lin, Int(8, act=Act(dynamic="tensor")))
    assert rel(q(x), lin(x)) < 0.03 and q.kernel == f"int8-w8a8-{few}"
    assert rel(q(many), lin(many)) < 0.03 and q.kernel == f"int8-w8a8-{backend}"
    q(x)  # the pick is remembered per row count, not once for all
    assert q.kernel == f"int8-w8a8-{few}"
    q.set_kernel_policy("dequant-fp32")  # ... and chosen again once the policy changes
    assert rel(q(x), lin(x)) < 0.03 and q.kernel.startswith("dequant-fp32")
    with pytest.raises(BitladderError, match="dynamic must be False, 'token' or 'tensor'"):
        Act(dynamic="row")
    with pytest.raises(BitladderError, match="int8 symmetric weights per channel"):
        bitladder.quantize(lin, Int(4, group=32, act=Act(dynamic=True)))
    with pytest.raises(BitladderError, match="unknown kernel"):
        Int(4, kernel="cuda")


@needs_ort
def test_kernel_policy_survives_save_load_and_deepcopy(tmp_path):
    import copy

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    q = bitladder.quantize(model, Int(4, group=32, kernel="dequant-fp32"))
    x = torch.randn(2, 64)
    q(x)
    back = bitladder.load(bitladder.save(q, tmp_path / "k.safetensors"), model=model)
    back(x)
    assert back[0].kernel == "dequant-fp32"
    auto = bitladder.quantize(model, Int(4, group=32))
    auto(x)  # builds onnxruntime sessions
    clone = copy.deepcopy(auto)  # sessions are not copied, they are rebuilt on use
    assert torch.allclose(clone(x), auto(x))


@pytest.mark.parametrize("rows", [8, onednn_min_rows()])
def test_siblings_share_one_quantised_input(rows, monkeypatch):
    from bitladder.kernels import FbgemmW8A8TokenKernel, OnednnW8A8TokenKernel

    torch.manual_seed(0)
    model = nn.ModuleDict({"ln": nn.LayerNorm(32), "q": nn.Linear(32, 16), "k": nn.Linear(32, 16)})
    calib = torch.randn(64, 32)
    x = torch.randn(rows, 32)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.q, self.k = model["ln"], model["q"], model["k"]

        def forward(self, t):
            h = self.ln(t)
            return self.q(h), self.k(h)

    q = bitladder.quantize(Two(), Int(8, act=Act(dynamic="token", smoothquant=0.5)), calib=[calib])
    assert torch.equal(q.q.in_scale, q.k.in_scale)
    calls = []
    for cls in (FbgemmW8A8TokenKernel, OnednnW8A8TokenKernel):
        monkeypatch.setattr(cls, "prepare", lambda self, t, s, orig=cls.prepare: calls.append(1) or orig(self, t, s))
    with torch.no_grad():
        h = q.ln(x)
        shared = (q.q(h), q.k(h))
        assert len(calls) == 1  # quantised once, multiplied twice
        h.mul_(1.0)  # an in-place change: the next reader quantises again
        q.k(h)
        assert len(calls) == 2
        alone = (q.q(q.ln(x)), q.k(q.ln(x)))  # fresh tensors: nothing shared
    assert torch.equal(shared[0], alone[0]) and torch.equal(shared[1], alone[1])
    with torch.inference_mode():  # inference tensors (no version counter) share too
        h = q.ln(x)
        assert torch.equal(q.q(h), shared[0]) and torch.equal(q.k(h), shared[1])
    assert len(calls) == 5


@pytest.mark.parametrize("cfg", [Int(8), Int(4, group=32), Int(8, act=Act(dynamic=True))], ids=["w8", "w4", "w8a8"])
def test_empty_batches_keep_their_shape(cfg):
    q = bitladder.quantize(nn.Linear(64, 8), cfg)
    assert q(torch.randn(0, 64)).shape == (0, 8)
    assert q(torch.randn(2, 0, 64)).shape == (2, 0, 8)


def test_float_formats_take_the_cpus_fp32_gemm_and_the_reference_path_stays_torchs():
    from bitladder.kernels import fp32_gemm

    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = bitladder.quantize(lin, bitladder.Float("bf16"))  # at 70 rows bf16 panels converted for the fp32 GEMM
    layer = next(m for m in q.modules() if isinstance(m, bitladder.nn.base.QuantModule))
    x = torch.randn(70, 96)
    want = F.linear(x, layer.weight(), lin.bias)
    with torch.no_grad():
        got = q(x)
        assert layer.kernel == "bf16-fp32" and rel(got, want) < 1e-6
        kern = layer._kernel_for(70)
        assert kern.gemm == fp32_gemm.engine(current())
        layer.set_kernel_policy("dequant-fp32")  # the reference path: what a fake-quantised twin computes, exactly
        assert torch.equal(q(x), want)


def test_readers_on_grids_of_different_steps_do_not_share(monkeypatch):
    from bitladder.formats.layout import Layout
    from bitladder.kernels import OnednnW8A8TokenKernel
    from bitladder.nn.layers import _shared_input
    from bitladder.tensor.quantized import QuantizedTensor

    monkeypatch.setenv("BITLADDER_CPU", "avx2")  # no VNNI: 7-bit weights take 255 steps, 8-bit ones 127
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    k7, k8 = (OnednnW8A8TokenKernel.from_qtensor(QuantizedTensor.from_float(w, q, Layout("channel")))
              for q in ("int7", "int8"))
    assert (k7.levels, k8.levels) == (255, 127)
    x = torch.randn(40, 32)
    _shared_input(x, k7, x, None)
    assert torch.equal(k8.finish(_shared_input(x, k8, x, None), None), k8(x))  # its own 127-step codes


_KEEPS = {"static": Act(smoothquant=0.5), "static-outliers": Act(smoothquant=0.5, outliers=4),
          "token": Act(dynamic="token", smoothquant=0.5), "tensor": Act(dynamic="tensor")}


@pytest.mark.parametrize("cpu", ["native", "avx512", "avx2"])
@pytest.mark.parametrize("act", list(_KEEPS), ids=list(_KEEPS))
@pytest.mark.parametrize("rotate", [None, 32], ids=["plain", "rotated"])
def test_a_layers_input_is_freed_with_its_last_reference(cpu, act, rotate, monkeypatch):
    """The quantised input a layer keeps on its input tensor (shared with siblings) must not refer back to it: the
    static C kernel's did, a cycle through a tensor's attributes that Python's collector cannot see, and every input
    of a static W8A8 model on a CPU without VNNI leaked outside inference mode (2.3 GB in a MiniLM bench worker)."""
    import gc
    import weakref

    monkeypatch.setenv("BITLADDER_CPU", cpu)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    q = bitladder.quantize(model, Int(8, act=_KEEPS[act], rotate=rotate), calib=[torch.randn(32, 64)])
    inputs = []  # every quantised layer's input, weakly
    for m in q.modules():
        if hasattr(m, "set_kernel_policy"):
            m.register_forward_pre_hook(lambda _, args: inputs.append(weakref.ref(args[0])))
    gc.disable()
    try:
        for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with mode():
                for rows in (1, 8, 300):
                    inputs.clear()
                    y = q(torch.randn(rows, 64))
                    kernels = {m.kernel for m in q.modules() if hasattr(m, "set_kernel_policy")}
                    del y
                    assert len(inputs) == 2 and all(r() is None for r in inputs), (mode.__name__, rows, kernels)
    finally:
        gc.enable()
