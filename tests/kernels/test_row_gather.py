"""Embedding rows in one C call (``RowGather``): the bits of ``dequantize()[idx]`` for every format it takes."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitladder
from bitladder import Int
from bitladder.formats.layout import Layout
from bitladder.kernels.c_lowbit import CLowbitKernel, RowGather
from bitladder.tensor.quantized import QuantizedTensor

pytestmark = pytest.mark.skipif(not CLowbitKernel.installed(), reason="C kernels not built (no compiler)")

FORMATS = ["int8", "uint8", "int4", "uint4", "int2", "uint2", "binary"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FORMATS), st.sampled_from([None, 8, 32, 64, 128]), st.integers(1, 12),
       st.sampled_from(["fp16", "bf16", "fp32"]), st.sampled_from(["int", "float", "none"]), st.integers(0, 2**16))
def test_rows_have_the_bits_of_the_whole_dequantised_table(fmt, group, k8, scale_dtype, zkind, seed):
    g = torch.Generator().manual_seed(seed)
    k = 8 * k8 * (1 if group is None else max(1, group // 8))  # rows on byte boundaries for every width
    c = 37
    w = torch.randn(c, k, generator=g) * 3
    layout = Layout("channel") if group is None else Layout("group", group=group)
    asym = fmt.startswith("u")
    qt = QuantizedTensor.from_float(w, fmt, layout, symmetric=not asym, scale_dtype=scale_dtype)
    if asym and zkind == "float":  # HQQ's fractional zero points, stored as floats
        qt = dataclasses.replace(qt, zero_point=(torch.rand(qt.scale.shape, generator=g) * 3).to(qt.scale.dtype))
    plan = RowGather.plan(qt)
    assert plan is not None
    idx = torch.randint(0, c, (3, 5), generator=g)
    got = plan(idx)
    assert got.shape == (3, 5, k) and got.dtype == torch.float32
    assert torch.equal(got, qt.dequantize(torch.float32)[idx])
    assert torch.equal(plan(idx.to(torch.int32)[:, 1:]), qt.dequantize(torch.float32)[idx[:, 1:]])


@pytest.mark.parametrize("fmt,layout,k", [("ternary", Layout("channel"), 384), ("int3", Layout("group", group=64), 384),
                                          ("int4", Layout("tensor"), 64), ("fp16", Layout("tensor"), 64)])
def test_formats_it_does_not_take_are_declined(fmt, layout, k):
    qt = QuantizedTensor.from_float(torch.randn(10, k), fmt, layout)
    assert RowGather.plan(qt) is None


def test_the_embedding_layer_uses_it_and_keeps_the_torch_bits_for_every_rung():
    emb = torch.nn.Embedding(300, 128)
    idx = torch.randint(0, 300, (2, 9))
    for cfg, in_c in ((Int(8), True), (Int(4, group=64), True), (Int(2, group=32, symmetric=False), True),
                      (bitladder.Ternary(), False), (Int(3, group=64), False)):
        q = bitladder.quantize(torch.nn.Sequential(emb), cfg)[0]
        assert torch.equal(q(idx), q.qweight.dequantize(torch.float32)[idx]), cfg
        assert (q._kernels["rows"][1] is not None) == in_c, cfg


def test_a_new_weight_is_read_not_the_one_gathered_before():
    q = bitladder.quantize(torch.nn.Sequential(torch.nn.Embedding(50, 64)), Int(4, group=32))[0]
    idx = torch.tensor([[1, 2, 3]])
    before = q(idx)
    q.weight_scale = q.weight_scale * 2  # a replaced buffer (as scale_outputs and loading do)
    assert torch.equal(q(idx), 2 * before)


def test_indices_out_of_range_raise_an_index_error():
    qt = QuantizedTensor.from_float(torch.randn(10, 64), "int4", Layout("group", group=32))
    plan = RowGather.plan(qt)
    for bad in ([10], [-1]):
        with pytest.raises(IndexError, match="out of range"):
            plan(torch.tensor(bad))
