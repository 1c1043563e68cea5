import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.kinds import KINDS, Kind, kind
from bitladder.formats.qtypes import QTYPES, QType
from bitladder.formats.layout import Layout
from bitladder.tensor.quantized import QuantizedTensor

FORMATS = sorted(QTYPES)


def test_every_format_names_a_registered_kind_and_every_kind_has_a_format():
    assert {q.kind for q in QTYPES.values()} == set(KINDS)


def test_a_format_of_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown number kind 'fp5'.*int"):
        QType("x5", "fp5", 5)


def test_a_kind_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        kind("int")(type("Again", (KINDS["int"].__class__,), {}))


def test_kind_is_an_abstract_base():
    with pytest.raises(TypeError):
        Kind()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([n for n in FORMATS if not QTYPES[n].is_float]), n=st.integers(1, 300),
       seed=st.integers(0, 2**16))
def test_codes_survive_the_kinds_own_pack_and_unpack(name, n, seed):
    q = QTYPES[name]
    rules = q.rules
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, rules.levels(q), (n,), generator=g).to(torch.uint8)
    codes = rules.from_unsigned(u, q)
    packed = rules.pack(codes, q)
    assert packed.dtype == torch.uint8 and packed.numel() == rules.packed_size(q, n)
    assert torch.equal(rules.unpack(packed, q, n).to(torch.int32), codes.to(torch.int32))
    mult, off = rules.affine(q)
    assert torch.equal(mult * u.to(torch.int32) - off, codes.to(torch.int32))
    assert int(u.max()) < 2 ** rules.width(q)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_stores_at_its_width_and_reloads_bit_exact(name):
    w = torch.randn(16, 64)
    layout = Layout("tensor") if QTYPES[name].is_float and QTYPES[name].bits >= 16 else Layout("channel")
    if QTYPES[name].rules.has_table:
        pytest.skip("codebook tables are built by their method (tests/methods/quantize)")
    qt = QuantizedTensor.from_float(w, name, layout)
    back = QuantizedTensor.from_parts(qt.tensors(), qt.meta())
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert qt.nbytes <= 16 * 64 * max(QTYPES[name].bits, 1) / 8 + 16 * 8
    assert float((qt.dequantize() - w).norm()) < float(w.norm())  # closer than dropping the weight
