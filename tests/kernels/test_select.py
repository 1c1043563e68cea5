"""Selection is rules over the registry: what auto picks follows the declared needs, a lesser CPU level
never gets a kernel that needs more, every kernel auto offers builds and is close to the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.errors import BitladderError
from bitladder.formats.layout import Layout
from bitladder.kernels import KERNELS, reference_linear, registry
from bitladder.kernels.cpu import current
from bitladder.kernels.select import candidates, choose, policies
from bitladder.tensor.quantized import QuantizedTensor

QTYPES = ["int8", "uint8", "int4", "uint4", "int3", "int2", "uint2", "ternary", "binary", "fp8_e4m3", "cb4"]
LAYOUTS = [Layout("group", group=g) for g in (8, 16, 32, 64, 96, 128)] + [Layout("channel"), Layout("tensor")]


def _qt(qname, layout, n=32, k=256):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    return QuantizedTensor.from_float(w, qname, layout, symmetric=not qname.startswith("u"))


def test_every_kernel_declares_its_needs_and_is_a_policy():
    for name, k in KERNELS.items():
        assert k.name == name and isinstance(k.requires, tuple) and isinstance(k.available(), bool)
    assert set(policies()) >= {k.name for k in registry.for_op("linear")} | {"auto", "int8-w8a8"}
    assert registry.for_op("conv2d")  # the integer convolution is registered like the Linear kernels
    with pytest.raises(BitladderError, match="registered: .*dequant-fp32"):
        registry.get("no-such-kernel")


@pytest.mark.parametrize("level", ["default", "avx2", "avx512", "native"])
def test_no_kernel_is_picked_that_the_level_lacks(level):
    cpu = current({"BITLADDER_CPU": level})
    for qname in QTYPES:
        for layout in LAYOUTS:
            qt = _qt(qname, layout)
            for m in (1, 8, 64, 1024):
                name = choose(qt, m, cpu=cpu)
                assert cpu.has(*KERNELS[name].requires), (qname, layout, m, name)
                assert name == candidates(qt, m, cpu)[0] and candidates(qt, m, cpu)[-1] == "dequant-fp32"


@given(q=st.sampled_from(QTYPES[:-2]), lay=st.sampled_from(LAYOUTS), m=st.sampled_from([1, 5, 40, 600]))
@settings(max_examples=30, deadline=None)
def test_whatever_auto_offers_builds_and_matches_the_reference(q, lay, m):
    qt = _qt(q, lay, 48, 192)
    x = torch.randn(m, 192, generator=torch.Generator().manual_seed(1))
    ref = reference_linear(qt, x)
    for name in candidates(qt, m):
        y = KERNELS[name].from_qtensor(qt)(x)
        assert float((y - ref).norm() / ref.norm()) < 3e-2, name  # int8 activations at most: ~1 %


def test_a_lesser_level_rounds_activations_to_7_bits(monkeypatch):
    from bitladder.kernels import FbgemmW8A8Kernel, OnednnW8A8Kernel

    qt = _qt("int8", Layout("channel"))
    monkeypatch.setenv("BITLADDER_CPU", "avx512")
    assert OnednnW8A8Kernel.from_qtensor(qt).levels == 127
    assert not FbgemmW8A8Kernel.installed() or FbgemmW8A8Kernel.from_qtensor(qt).reduce_range  # no fbgemm: no AVX2
    monkeypatch.setenv("BITLADDER_CPU", "native")
    assert OnednnW8A8Kernel.from_qtensor(qt).levels == (255 if current().dot32("onednn") else 127)


def test_seven_bit_weights_keep_8_bit_activations_on_any_cpu(monkeypatch):
    """2 * 255 * 64 = 32640: int7 codes cannot saturate a u8 x s8 pair sum, so no CPU level halves the grid."""
    from bitladder.kernels import FbgemmW8A8Kernel, OnednnW8A8Kernel

    qt = _qt("int7", Layout("channel"))
    assert int(qt.codes().abs().max()) <= 64
    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    assert OnednnW8A8Kernel.from_qtensor(qt).levels == 255
    assert not FbgemmW8A8Kernel.installed() or not FbgemmW8A8Kernel.from_qtensor(qt).reduce_range
