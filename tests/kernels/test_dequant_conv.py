"""Weight-only Conv2d on a weight dequantised in one pass from bit planes: the same bits as the layer's own
torch dequantisation (so the same outputs), the packed weight's memory, and the layer's own path wherever it
does not apply."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitladder
from bitladder.kernels import KernelUnsupported
from bitladder.kernels.dequant_conv import DequantConv2d
from bitladder.pipeline.ladder.rungs import parse_rung

pytestmark = pytest.mark.skipif(not DequantConv2d.installed(), reason="numba is not installed")

RUNGS = ["int8", "int4-g32", "int4-g32-asym", "int3-g32-asym", "int2-g32-asym", "ternary", "binary", "int5", "int8-pt"]


def _pair(conv: nn.Conv2d, rung: str):
    """The layer under auto (the kernel) and the same layer on its own torch path (policy dequant-fp32)."""
    q = bitladder.quantize(nn.Sequential(conv), parse_rung(rung))[0]
    ref = bitladder.quantize(nn.Sequential(conv), parse_rung(rung))[0]
    ref.set_kernel_policy("dequant-fp32")
    return q, ref


@pytest.mark.parametrize("rung", RUNGS)
def test_same_outputs_as_the_layers_own_dequantisation(rung):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1).eval()
    q, ref = _pair(conv, rung)
    x = torch.randn(3, 16, 9, 7)
    with torch.inference_mode():
        y, want = q(x), ref(x)
    assert q.kernel == "c-dequant-conv" and ref.kernel == "dequant-fp32"
    assert torch.equal(y, want)
    kern = q._kernels["conv"]
    assert torch.equal(kern.weight(), q.qweight.dequantize(torch.float32))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 6), o=st.integers(1, 9), k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, "same"]),
       rung=st.sampled_from(RUNGS), batch=st.integers(0, 3))
def test_any_convolution_geometry(c, o, k, stride, dilation, groups, padding, rung, batch):
    if padding == "same":
        stride = 1  # torch refuses 'same' with strides
    conv = nn.Conv2d(c * groups, o * groups, k, stride, padding, dilation, groups=groups).eval()
    q, ref = _pair(conv, rung)
    x = torch.randn(batch, c * groups, 11, 10)
    with torch.inference_mode():
        assert torch.equal(q(x), ref(x))
        assert torch.equal(q(x[0]), ref(x[0])) if batch else True  # unbatched input
    assert q.kernel == "c-dequant-conv"


def test_holds_the_packed_weight_not_a_float_copy():
    conv = nn.Conv2d(64, 128, 3).eval()
    q = bitladder.quantize(nn.Sequential(conv), parse_rung("int4-g32"))[0]
    q(torch.randn(1, 64, 5, 5))
    kern = q._kernels["conv"]
    fp32 = conv.weight.numel() * 4
    # 4-bit codes beside fp32 group scales and offsets (the stored scales are fp16): ~1/5.3 of fp32
    assert kern.nbytes < fp32 / 5
    assert q.qweight.nbytes <= kern.nbytes < 1.4 * q.qweight.nbytes


def test_the_layers_own_path_where_it_does_not_apply():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3).eval()
    x = torch.randn(8, 4, 6, 6)
    for rung in ("fp16", "fp8_e4m3", "bf16"):  # float codes: no bit planes, a cast (kernels/cast_conv.py)
        q = bitladder.quantize(nn.Sequential(conv), parse_rung(rung))[0]
        q(x)
        assert q.kernel == "cast-conv"
    static = bitladder.quantize(nn.Sequential(conv), parse_rung("int8-a8"), calib=[x])[0]
    static(x)
    # an activation format takes the integer convolution (where the CPU takes its grid) or its simulated path
    assert static.kernel == "int8-w8a8-onednn-conv-static" or static.kernel.startswith("dequant-fp32+act")
    with pytest.raises(KernelUnsupported, match="integer codes"):
        DequantConv2d.from_layer(bitladder.quantize(nn.Sequential(conv), parse_rung("fp16"))[0].qweight,
                                 (1, 1), (0, 0), (1, 1), 1)


def test_saved_and_loaded_layers_choose_it_again(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    q = bitladder.quantize(model, parse_rung("int4-g32"))
    x = torch.randn(2, 3, 8, 8)
    y = q(x)
    back = bitladder.load(bitladder.save(q, tmp_path / "c.safetensors"), model=model)
    assert torch.equal(back(x), y) and back[0].kernel == back[2].kernel == "c-dequant-conv"
