"""Static W8A8 convolution: the layer's calibrated grid on oneDNN's integer convolution where the CPU takes all its
codes (the same values as the simulated path, to float rounding), the simulated path where it cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitladder
from bitladder import Act, Int
from bitladder.formats.layout import Layout
from bitladder.kernels import KernelUnsupported
from bitladder.kernels.static_conv import OnednnConv2dStatic
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not OnednnConv2dStatic.available(), reason="torch has no oneDNN int8 convolution")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 1)).eval()


def _pair(bits: int, wbits: int = 8):
    """The static rung under auto, and the same layers on their simulated path (policy dequant-fp32)."""
    calib = [torch.randn(16, 4, 10, 10)]
    q = bitladder.quantize(_model(), Int(wbits, act=Act(bits=bits)), calib=calib)
    ref = bitladder.quantize(_model(), Int(wbits, act=Act(bits=bits)), calib=calib)
    for m in ref.modules():
        if hasattr(m, "set_kernel_policy"):
            m.set_kernel_policy("dequant-fp32")
    return q, ref


def _levels() -> int:
    """Steps of a uint8 grid this CPU's integer convolution takes against 8-bit weights (255 with VNNI, else 127)."""
    qt = QuantizedTensor.from_float(torch.randn(4, 4, 3, 3), "int8", Layout("channel"), symmetric=True)
    return OnednnConv2dStatic.from_layer(qt, (1, 1), (1, 1), (1, 1), 1).levels


@pytest.mark.parametrize("bits", [8, 4])
def test_the_calibrated_grid_on_the_integer_convolution_gives_the_simulated_values(bits):
    q, ref = _pair(bits)
    x = torch.randn(3, 4, 10, 10) * 1.5  # beyond the calibrated range too: the grid clamps
    with torch.inference_mode():
        y, want = q(x), ref(x)
    convs = [m for m in q.modules() if isinstance(m, bitladder.nn.layers.QuantConv2d)]
    if 2**bits - 1 <= _levels():  # every code of the grid: the integer convolution (a 4-bit grid on any CPU)
        assert all(m.kernel == "int8-w8a8-onednn-conv-static" for m in convs)
    else:  # a u8 x s8 pair sum could leave 16 bits here: the simulated path, by name
        assert all(m.kernel.startswith("dequant-fp32+act") for m in convs)
    assert float((y - want).norm() / want.norm()) < 1e-5


def test_without_32_bit_pair_sums_the_layer_keeps_its_simulated_path(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx512")  # no VNNI: oneDNN's convolution takes 128 codes of 8-bit weights
    q, ref = _pair(8)
    x = torch.randn(2, 4, 10, 10)
    with torch.inference_mode():
        assert torch.equal(q(x), ref(x))
    assert q[0].kernel.startswith("dequant-fp32+act")
    qt = QuantizedTensor.from_float(torch.randn(4, 4, 3, 3), "int8", Layout("channel"), symmetric=True)
    with pytest.raises(KernelUnsupported, match="VNNI"):
        OnednnConv2dStatic.from_layer(qt, (1, 1), (1, 1), (1, 1), 1).bind(0.1, 0.0, "uint8")


@pytest.mark.parametrize("cpu", ["native", "avx512", "avx2"])
def test_7_bit_weights_take_the_whole_8_bit_grid_on_the_integer_convolution_on_every_cpu(monkeypatch, cpu):
    """2 * 255 * 64 fits a u8 x s8 pair sum: with or without VNNI the rung int7-a8 convolves in integers."""
    monkeypatch.setenv("BITLADDER_CPU", cpu)
    q, ref = _pair(8, wbits=7)
    x = torch.randn(2, 4, 10, 10) * 1.5
    with torch.inference_mode():
        y, want = q(x), ref(x)
    assert [m.kernel for m in q.modules() if isinstance(m, bitladder.nn.layers.QuantConv2d)] == [
        "int8-w8a8-onednn-conv-static"] * 3
    assert float((y - want).norm() / want.norm()) < 1e-5


def test_it_takes_only_static_integer_grids():
    assert OnednnConv2dStatic.takes("auto", {"qtype": "uint8", "observer": "minmax"})
    assert not OnednnConv2dStatic.takes("auto", None)  # weight-only
    assert not OnednnConv2dStatic.takes("auto", {"qtype": "int8", "dynamic": "token"})
    assert not OnednnConv2dStatic.takes("auto", {"qtype": "binary", "observer": "learned-shift"})
    assert not OnednnConv2dStatic.takes("dequant-fp32", {"qtype": "uint8", "observer": "minmax"})
