"""The clipping search finds, per block, the best of its candidate ranges: the same choice as quantising
and dequantising the whole block at every shrink factor (the plain search it replaces)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.qtypes import QTYPES
from bitladder.formats.quant import choose_qparams, dequantize, quantize
from bitladder.methods.quantize.clip import search_qparams


def plain_search(xb, qtype, symmetric, scale_dtype, grid=20, min_ratio=0.5):
    best_s, best_z = choose_qparams(xb, qtype, symmetric, scale_dtype)
    best = torch.full(xb.shape[:-1] + (1,), float("inf"))
    for i in range(grid):
        r = 1.0 - (1.0 - min_ratio) * i / (grid - 1)
        s, z = choose_qparams(xb * r, qtype, symmetric, scale_dtype)
        e = (dequantize(quantize(xb, s, z, qtype)[0], s, z, qtype) - xb).pow(2).sum(-1, keepdim=True)
        better = e < best
        best, best_s = torch.where(better, e, best), torch.where(better, s, best_s)
        best_z = None if best_z is None else torch.where(better, z, best_z)
    return best_s, best_z


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["int8", "int4", "int3", "int2", "uint4", "uint3", "uint2"]),
       seed=st.integers(0, 10_000), block=st.sampled_from([8, 32, 64]),
       scale_dtype=st.sampled_from([torch.float16, torch.float32, torch.bfloat16]),
       heavy=st.booleans())
def test_search_matches_the_plain_search(name, seed, block, scale_dtype, heavy):
    g = torch.Generator().manual_seed(seed)
    xb = torch.randn(6, 3, block, generator=g)
    if heavy:  # outliers: where clipping pays
        xb = xb * torch.rand(6, 3, block, generator=g).pow(8).mul(20).add(1)
    qtype = QTYPES[name]
    symmetric = not name.startswith("u")
    s, z = search_qparams(xb, qtype, symmetric, scale_dtype)
    rs, rz = plain_search(xb, qtype, symmetric, scale_dtype)
    assert torch.equal(s, rs)
    assert (z is None and rz is None) or torch.equal(z, rz)


def test_search_never_worse_than_the_full_range():
    g = torch.Generator().manual_seed(3)
    xb = torch.randn(16, 4, 64, generator=g) ** 3
    qtype = QTYPES["int3"]
    s0, _ = choose_qparams(xb, qtype)
    s1, _ = search_qparams(xb, qtype, True)
    err = lambda s: (dequantize(quantize(xb, s, None, qtype)[0], s, None, qtype) - xb).pow(2).sum(-1)
    assert bool((err(s1) <= err(s0)).all())
    assert float(err(s1).sum()) < 0.9 * float(err(s0).sum())  # heavy tails: clipping must pay here
