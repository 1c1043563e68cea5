"""``Kind.round_trip`` is ``dequantize(quantize(x))`` for every format that has a scale."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.qtypes import QTYPES
from bitladder.formats.quant import choose_qparams, dequantize, quantize

SCALED = [n for n, q in QTYPES.items() if not q.rules.has_table]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(SCALED), seed=st.integers(0, 10_000), symmetric=st.booleans())
def test_round_trip_equals_quantize_then_dequantize(name, seed, symmetric):
    qtype = QTYPES[name]
    g = torch.Generator().manual_seed(seed)
    xb = torch.randn(5, 2, 16, generator=g) * 3
    s, z = choose_qparams(xb * 0.8, qtype, symmetric, torch.float16)  # shrunk: some values clip
    if s is None:
        return  # wide floats are stored as themselves: nothing is searched
    want = dequantize(quantize(xb, s, z, qtype)[0], s, z, qtype)
    assert torch.equal(qtype.rules.round_trip(xb, s, z, qtype), want)
