"""oneDNN W8A8 convolution: equals its quantised arithmetic written out in PyTorch; layers use it under a
dynamic W8A8 policy and keep the float path where it cannot run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitladder
from bitladder import Act, Int
from bitladder.formats.layout import Layout
from bitladder.kernels import KernelUnsupported
from bitladder.kernels.onednn_conv import OnednnConv2dW8A8
from bitladder.kernels.fbgemm_w8a8 import levels_for
from bitladder.kernels.onednn_w8a8 import _grid
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not OnednnConv2dW8A8.available(), reason="torch has no oneDNN int8 convolution")

# (batch, in, out, height, width, kernel, stride, padding, dilation): odd sizes, batch 1, 1x1, dilation
CASES = [(3, 5, 7, 9, 11, 3, 2, 1, 1), (1, 16, 32, 8, 8, 3, 1, 1, 1), (2, 4, 8, 13, 6, 5, 1, 2, 2),
         (4, 8, 17, 7, 7, 1, 1, 0, 1), (2, 4, 6, 10, 10, 3, 3, 0, 1)]


FLOAT = ("c-dequant-conv", "dequant-fp32")  # float compute: one C dequantisation pass, or torch's where numba is missing


def _weights(o: int, c: int, k: int, layout: Layout, seed: int = 0) -> QuantizedTensor:
    w = torch.randn(o, c, k, k, generator=torch.Generator().manual_seed(seed))
    return QuantizedTensor.from_float(w, "int8", layout, symmetric=True)


def _emulate(qt: QuantizedTensor, x: torch.Tensor, bias, stride, padding, dilation) -> torch.Tensor:
    """What the kernel computes: x on its uint8 grid, then the convolution with the dequantised weight."""
    scale, zp = _grid(float(x.min()), float(x.max()), levels_for(qt.codes(), "onednn"))  # the kernel's grid
    xq = (torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr().float() - zp) * scale
    return F.conv2d(xq, qt.dequantize(torch.float32), bias, stride, padding, dilation)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("layout", [Layout("channel"), Layout("tensor")], ids=["channel", "tensor"])
def test_equals_its_quantised_arithmetic_and_tracks_float(layout):
    for n, c, o, h, w, k, s, p, d in CASES:
        qt = _weights(o, c, k, layout)
        x, bias = torch.randn(n, c, h, w), torch.randn(o)
        y = OnednnConv2dW8A8.from_layer(qt, (s, s), (p, p), (d, d), 1)(x, bias)
        ref = F.conv2d(x, qt.dequantize(torch.float32), bias, s, p, d)
        assert y.shape == ref.shape
        # integer accumulation: only float rounding separates it from the arithmetic written out
        assert _rel(y, _emulate(qt, x, bias, s, p, d)) < 1e-5
        assert _rel(y, ref) < 2e-2  # 8-bit activations, one scale per call: ~1 % off the float layer


def test_refuses_what_it_cannot_run():
    with pytest.raises(KernelUnsupported, match=r"int8 \(or int7\) symmetric"):
        OnednnConv2dW8A8.from_layer(QuantizedTensor.from_float(torch.randn(4, 3, 3, 3), "int4", Layout("channel"),
                                                               symmetric=True), (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(KernelUnsupported, match="grouped"):
        OnednnConv2dW8A8.from_layer(_weights(8, 1, 3, Layout("channel")), (1, 1), (1, 1), (1, 1), 8)
    with pytest.raises(KernelUnsupported, match="padding='same'"):
        OnednnConv2dW8A8.from_layer(_weights(8, 4, 3, Layout("channel")), (1, 1), "same", (1, 1), 1)
    with pytest.raises(KernelUnsupported, match="3 input channel"):  # an RGB stem: slower in int8 than in float
        OnednnConv2dW8A8.from_layer(_weights(8, 3, 3, Layout("channel")), (1, 1), (1, 1), (1, 1), 1)


def test_dynamic_w8a8_runs_convolutions_in_int8_and_falls_back_where_it_cannot(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Conv2d(16, 8, 3, padding="same"), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.randn(5, 4, 8, 8)
    q = bitladder.quantize(model, Int(8, act=Act(dynamic="tensor")))
    y = q(x)
    assert _rel(y, model(x)) < 3e-2
    assert q[0].kernel == "int8-w8a8-onednn-conv"
    # grouped, 'same': float compute, on the weight-only kernel where it is installed
    assert q[2].kernel in FLOAT and q[3].kernel in FLOAT
    assert q(torch.randn(0, 4, 8, 8)).shape == (0, 10)  # an empty batch takes the float path
    back = bitladder.load(bitladder.save(q, tmp_path / "c.safetensors"), model=copy.deepcopy(model))
    assert torch.allclose(back(x), y, atol=1e-5) and back[0].kernel == "int8-w8a8-onednn-conv"
    weight_only = bitladder.quantize(model, Int(8))
    weight_only(x)
    # no activation format asked for: float compute (the weight dequantised in one pass where numba is installed)
    assert weight_only[0].kernel in FLOAT
    seven = bitladder.quantize(model, Int(7, act=Act(dynamic="tensor")))  # 7-bit codes fit the int8 convolution
    assert _rel(seven(x), model(x)) < 5e-2 and seven[0].kernel == "int8-w8a8-onednn-conv"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_output_comes_in_the_layout_f_conv2d_gives(channels_last):
    """oneDNN's int8 convolution computes channels-last; its output must still come in the layout the float
    convolution gives, or a model that views it (``y.view(n, -1)``) fails once quantised."""
    qt = _weights(6, 4, 3, Layout("channel"))
    x = torch.randn(2, 4, 5, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = OnednnConv2dW8A8.from_layer(qt, (1, 1), (1, 1), (1, 1), 1)(x, None)
    ref = F.conv2d(x, qt.dequantize(torch.float32), None, 1, 1)
    assert y.stride() == ref.stride()


def test_a_model_that_views_its_convolution_output_runs_quantised():
    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8 * 6 * 6, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    model, x = Viewing().eval(), torch.randn(3, 4, 6, 6)
    q = bitladder.quantize(model, Int(8, act=Act(dynamic="tensor")))
    assert _rel(q(x), model(x)) < 3e-2 and q.conv.kernel == "int8-w8a8-onednn-conv"
