"""Static (calibrated) activations on the integer GEMMs: the layer's own codes where the GEMM takes all of
them, a clamped 127-step grid over the same range where it cannot, and auto never changes the numerics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitladder
from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.kernels import KERNELS, hadamard
from bitladder.kernels.base import reference_linear
from bitladder.kernels.select import STATIC_C
from bitladder.kernels.static_w8a8 import static_grid
from bitladder.methods.quantize.methods import Act
from bitladder.tensor.quantized import QuantizedTensor



def _installed(name: str):
    """``name`` as a parameter that skips where torch lacks its engine (fbgemm without AVX2: an emulated Nehalem)."""
    return pytest.param(name, marks=pytest.mark.skipif(not KERNELS[name].installed(),
                                                       reason=f"{name}: torch has no engine for it on this CPU"))


STATIC = [_installed(n) for n in ("int8-w8a8-onednn-static", "int8-w8a8-fbgemm-static")]


def fake(x, scale, zp, qtype):
    qt = get_qtype(qtype)
    return (torch.clamp(torch.round(x / scale) + zp, qt.qmin, qt.qmax) - zp) * scale


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["uint8", "int8", "uint4", "int4"]), st.floats(1e-3, 1.0), st.data())
def test_full_grid_keeps_the_codes_and_a_short_one_spans_the_same_range(qtype, scale, data):
    qt = get_qtype(qtype)
    zp = data.draw(st.integers(qt.qmin, qt.qmax)) if qtype.startswith("u") else 0
    step, z, lo, hi = static_grid(scale, zp, qtype, 255)
    assert (step, z) == (scale, zp - qt.qmin) and 0 <= z <= 255
    assert lo == pytest.approx((qt.qmin - zp) * scale) and hi == pytest.approx((qt.qmax - zp) * scale)
    step7, z7, lo7, hi7 = static_grid(scale, zp, qtype, 127)
    assert (lo7, hi7) == (lo, hi) and 0 <= z7 <= 127
    if qt.qmax - qt.qmin > 127:
        assert step7 == pytest.approx((hi - lo) / 127)


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize("qtype,zp", [("uint8", 117), ("int8", 0), ("uint4", 6)])
def test_seven_bit_weights_give_the_fake_quantised_layer_on_every_cpu(name, qtype, zp, monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")  # no VNNI: 7-bit weights still take all 256 input codes
    torch.manual_seed(0)
    qt = QuantizedTensor.from_float(torch.randn(48, 96), "int7", Layout("channel"))
    x = torch.randn(37, 96) * 3  # beyond the grid's range on both sides
    scale = 6.0 / (get_qtype(qtype).qmax - get_qtype(qtype).qmin)
    k = KERNELS[name].from_qtensor(qt).bind(scale, zp, qtype)
    assert k.levels == 255
    ref = reference_linear(qt, fake(x, scale, zp, qtype))
    assert torch.allclose(k(x), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", [_installed("int8-w8a8-fbgemm-static")])
def test_eight_bit_weights_without_vnni_clamp_to_127_steps_and_never_saturate(name, monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    torch.manual_seed(1)
    w = torch.randn(32, 256)
    w[:, ::2] = w[:, ::2].sign() * w.abs().amax()  # every pair of products near the extreme: saturation bait
    qt = QuantizedTensor.from_float(w, "int8", Layout("channel"))
    k = KERNELS[name].from_qtensor(qt).bind(4.0 / 255, 128, "uint8")
    assert k.levels == 127
    x = torch.randn(20, 256) * 100  # far outside [-2, 2]: clamped to it, codes at most 127
    step, z, lo, hi = k._grid
    ref = reference_linear(qt, (torch.round(x.clamp(lo, hi) / step) + z - z) * step)
    assert torch.allclose(k(x), ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))


@pytest.mark.parametrize("qtype,zp", [("uint8", 117), ("uint8", 0), ("int8", 0), ("uint4", 6)])
@pytest.mark.parametrize("rotate", [0, 64])
def test_onednn_without_vnni_splits_the_layers_own_codes_over_two_gemms(qtype, zp, rotate, monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")  # oneDNN without VNNI: 127 steps per GEMM, never saturated
    torch.manual_seed(1)
    w = torch.randn(32, 256)
    w[:, ::2] = w[:, ::2].sign() * w.abs().amax()  # every pair of products near the extreme: saturation bait
    qt = QuantizedTensor.from_float(w, "int8", Layout("channel"))
    g = get_qtype(qtype)
    scale = 4.0 / (g.qmax - g.qmin)
    k = KERNELS["int8-w8a8-onednn-static"].from_qtensor(qt).bind(scale, zp, qtype)
    assert k.levels == 127 and k.split == (g.qmax - g.qmin > 127)
    x = torch.randn(20, 256) * 3  # beyond the grid on both sides
    if rotate and not k.rotates:
        pytest.skip("the C transform was not built")
    ref_in = fake(hadamard.butterflies(x, rotate) if rotate else x, scale, zp, qtype)
    y = k.finish(k.prepare_rotated(x, rotate), None) if rotate else k(x)
    ref = reference_linear(qt, ref_in)
    # the layer's own codes: only float rounding apart (two partial sums instead of one)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _layer(bits: int):
    torch.manual_seed(2)
    return bitladder.quantize(torch.nn.Linear(64, 16), bitladder.Int(bits, act=Act()), calib=[torch.randn(128, 64)])


def test_auto_takes_the_integer_gemm_only_where_it_is_exact(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    x = torch.randn(300, 64)
    w7, w8 = _layer(7), _layer(8)
    ref7 = torch.nn.functional.linear(w7.prepare_input(x), w7.weight(), w7.bias)
    assert torch.allclose(w7(x), ref7, atol=1e-4) and w7.kernel == "int8-w8a8-onednn-static"
    few = "int8-w8a8-fbgemm-static" if KERNELS["int8-w8a8-fbgemm-static"].installed() else w7.kernel
    assert w7(x[:4]) is not None and w7.kernel == few  # few rows: fbgemm, where torch has it (AVX2)
    ref8 = torch.nn.functional.linear(w8.prepare_input(x), w8.weight(), w8.bias)
    # 8-bit weights, no VNNI: the C kernel's 16-bit pairs at every size (oneDNN's two-GEMM split where it was not
    # built), the layer's codes either way
    whole = STATIC_C if KERNELS[STATIC_C].available() else "int8-w8a8-onednn-static"
    for rows in (300, 4):
        got = w8(x[:rows])
        assert w8.kernel == whole and torch.allclose(got, ref8[:rows], atol=1e-4)
    w8.set_kernel_policy("int8-w8a8-static")  # the family named: the same
    assert torch.allclose(w8(x[:4]), ref8[:4], atol=1e-4) and w8.kernel == whole


def test_recalibrating_rebinds_the_kernel():
    lin = _layer(7)
    x = torch.randn(300, 64)
    before = lin(x)
    lin.set_act("uint8", lin.act_scale * 2, lin.act_zero_point, "minmax")
    after = lin(x)
    ref = torch.nn.functional.linear(lin.prepare_input(x), lin.weight(), lin.bias)
    assert not torch.allclose(before, after) and torch.allclose(after, ref, atol=1e-4)


@pytest.mark.parametrize("qtype,zp", [("uint8", 117), ("uint4", 6)])
@pytest.mark.parametrize("scaled", [False, True])
def test_the_c_pass_gives_the_pytorch_paths_codes(qtype, zp, scaled, monkeypatch):
    if not hadamard.installed():
        pytest.skip("the C kernels were not built")
    monkeypatch.setenv("BITLADDER_CPU", "avx2")  # the [lo; hi] split
    qt = QuantizedTensor.from_float(torch.randn(32, 256), "int8", Layout("channel"))
    g = get_qtype(qtype)
    k = KERNELS["int8-w8a8-onednn-static"].from_qtensor(qt).bind(4.0 / (g.qmax - g.qmin), zp, qtype)
    x, s = torch.randn(20, 256) * 3, (torch.rand(256) + 0.5 if scaled else None)
    fast = k.prepare(x, s)
    monkeypatch.setattr(hadamard, "fast_path", lambda _x: False)
    slow = k.prepare(x, s)
    assert torch.equal(fast[0], slow[0]) and fast[1:] == slow[1:]
    assert torch.equal(k.finish(fast, None), k.finish(slow, None))
