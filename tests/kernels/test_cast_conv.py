"""Float-format Conv2d on one cast per call: the same outputs as the layer's own dequantisation, the stored
bytes' memory, and the layer's own path (or the integer kernels) wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitladder
from bitladder.kernels import CastConv2d, KernelUnsupported
from bitladder.kernels.select import choose_conv
from bitladder.pipeline.ladder.rungs import parse_rung
from bitladder.tensor.quantized import QuantizedTensor

RUNGS = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]


def _pair(conv: nn.Conv2d, rung: str):
    """The layer under auto (the kernel) and the same layer on its own torch path (policy dequant-fp32)."""
    q = bitladder.quantize(nn.Sequential(conv), parse_rung(rung))[0]
    ref = bitladder.quantize(nn.Sequential(conv), parse_rung(rung))[0]
    ref.set_kernel_policy("dequant-fp32")
    return q, ref


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("rung", RUNGS)
def test_same_outputs_as_the_layers_own_dequantisation(rung, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1).eval()
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    q, ref = _pair(conv, rung)
    x = torch.randn(3, 16, 9, 7)
    with torch.inference_mode():
        y, want = q(x), ref(x)
    assert q.kernel == "cast-conv" and ref.kernel == "dequant-fp32"
    assert torch.equal(y, want)
    assert q(x[:0]).shape == (0, 24, 9, 7) and q(x[0]).shape == (24, 9, 7)  # empty and unbatched inputs


@pytest.mark.parametrize("stride,padding,dilation,groups", [(2, 0, 1, 1), (1, 2, 2, 4), (3, 1, 1, 16)])
def test_strides_dilations_and_groups_are_torchs(stride, padding, dilation, groups):
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 32, 3, stride=stride, padding=padding, dilation=dilation, groups=groups).eval()
    q, ref = _pair(conv, "fp8_e4m3")
    x = torch.randn(2, 16, 11, 13)
    with torch.inference_mode():
        assert torch.equal(q(x), ref(x))
    assert q.kernel == "cast-conv"


def test_the_weight_is_the_stored_values_and_the_memory_the_stored_bytes():
    torch.manual_seed(2)
    w = torch.randn(8, 4, 3, 3)
    for fmt in RUNGS:
        qt = QuantizedTensor.from_float(w, fmt, sparse=False)
        kern = CastConv2d.from_layer(qt, 1, 0, 1, 1)
        assert torch.equal(kern.weight(), qt.dequantize(torch.float32)) and kern.nbytes == qt.nbytes
        assert kern.nbytes < w.numel() * 4


def test_integer_codes_and_other_layouts_are_not_its():
    w = torch.randn(8, 4, 3, 3)
    assert choose_conv(QuantizedTensor.from_float(w, "bf16"), "auto", None) == "cast-conv"
    assert choose_conv(QuantizedTensor.from_float(w, "fp16"), "auto", {"qtype": "int8"}) != "cast-conv"
    for qt in (QuantizedTensor.from_float(w, "int8"), QuantizedTensor.from_float(w.reshape(8, 36), "fp16"),
               QuantizedTensor.from_float(w, "fp64")):
        assert not CastConv2d.applies(qt)
        with pytest.raises(KernelUnsupported, match="4-D weight in fp16, bf16"):
            CastConv2d.from_layer(qt, 1, 0, 1, 1)
