import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QTYPES
from bitladder.formats.quant import sqnr_db
from bitladder.tensor.quantized import QuantizedTensor

ALL = ["fp64", "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "uint8", "int4", "uint4", "int3",
       "uint3", "int2", "uint2", "ternary", "binary"]


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(ALL), rows=st.integers(1, 9), cols=st.integers(1, 70),
       gran=st.sampled_from(["tensor", "channel", "group"]), group=st.integers(1, 40))
def test_measured_bytes_match_theory_and_round_trip(name, rows, cols, gran, group):
    w = torch.randn(rows, cols)
    lay = Layout(gran, 0, group if gran == "group" else None)
    qt = QuantizedTensor.from_float(w, name, lay, symmetric=not name.startswith("u"))
    # packed codes are exact up to the last partial byte of each packed stream
    assert qt.theoretical_nbytes <= qt.nbytes < qt.theoretical_nbytes + 2
    back = QuantizedTensor.from_parts(qt.tensors(), qt.meta())
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert qt.dequantize().shape == w.shape


def test_group_scales_are_per_group_and_sqnr_improves_with_bits():
    w = torch.randn(32, 256)
    dbs = [sqnr_db(w, QuantizedTensor.from_float(w, f"int{b}", Layout("group", group=64)).dequantize())
           for b in (2, 3, 4, 8)]
    assert dbs == sorted(dbs)
    qt = QuantizedTensor.from_float(w, "int4", Layout("group", group=64))
    assert qt.scale.shape == (32, 4) and qt.scale.dtype == torch.float16


def test_channel_axis_one_for_transposed_weights():
    w = torch.randn(8, 3) * torch.tensor([1.0, 100.0, 0.01])  # columns of very different range
    per_col = QuantizedTensor.from_float(w, "int8", Layout("channel", axis=1))
    per_row = QuantizedTensor.from_float(w, "int8", Layout("channel", axis=0))
    assert per_col.scale.shape == (3, 1)
    assert sqnr_db(w[:, 2], per_col.dequantize()[:, 2]) > sqnr_db(w[:, 2], per_row.dequantize()[:, 2]) + 20


def test_fp64_keeps_the_double_exactly():
    w = torch.randn(4, 4, dtype=torch.float64)
    qt = QuantizedTensor.from_float(w, "fp64", Layout("tensor"))
    assert torch.equal(qt.dequantize(torch.float64), w) and qt.nbytes == 16 * 8


def test_inconsistent_parts_are_rejected():
    qt = QuantizedTensor.from_float(torch.randn(4, 32), "int4", Layout("group", group=8))
    t = qt.tensors()
    t["packed"] = t["packed"][:-1]
    with pytest.raises(ValueError, match="packed codes"):
        QuantizedTensor.from_parts(t, qt.meta())
    t = qt.tensors()
    t["scale"] = t["scale"][:, :2]
    with pytest.raises(ValueError, match="scale shape"):
        QuantizedTensor.from_parts(t, qt.meta())


def test_asymmetric_zero_points_are_packed_at_the_format_width():
    qt = QuantizedTensor.from_float(torch.rand(16, 64) + 1, "uint4", Layout("group", group=16), symmetric=False)
    assert qt.zero_point.numel() == 16 * 4 // 2
    assert QTYPES["uint4"].qmin == 0


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([n for n in ALL if QTYPES[n].rules.integer_codes]), rows=st.integers(1, 6),
       cols=st.integers(1, 70), zeros=st.floats(0.0, 0.9), sparse=st.booleans())
def test_unsigned_codes_are_the_packers_codes(name, rows, cols, zeros, sparse):
    # the kernels' one-byte read of the codes equals the signed round trip, sparse (bitmask) storage included
    from bitladder.formats.quant import to_unsigned

    w = torch.randn(rows, cols) * (torch.rand(rows, cols) >= zeros)
    qt = QuantizedTensor.from_float(w, name, Layout("group", group=16), symmetric=not name.startswith("u"),
                                    sparse=sparse)
    u = qt.unsigned_codes()
    assert u.dtype == torch.uint8 and torch.equal(u, to_unsigned(qt.codes(), qt.qtype))


def test_rounding_a_slab_of_rows_at_a_time_gives_the_same_tensor(monkeypatch):
    import bitladder.formats.kinds.base as base
    import bitladder.tensor.quantized as quantized
    from bitladder.formats.layout import Layout
    from bitladder.formats.qtypes import QTYPES

    g = torch.Generator().manual_seed(3)
    w = torch.randn(50, 64, generator=g) * 3
    for name in sorted(QTYPES):
        for sym in (True, False):
            whole = quantized.QuantizedTensor.from_float(w, name, Layout("group", -1, 32), symmetric=sym)
            monkeypatch.setattr(quantized, "_SLAB", 64 * 3)  # 3 rows at a time, the last slab partial
            monkeypatch.setattr(base, "PACK_SLAB", 8 * 37)  # and 296 codes packed at a time
            slabbed = quantized.QuantizedTensor.from_float(w, name, Layout("group", -1, 32), symmetric=sym)
            monkeypatch.setattr(quantized, "_SLAB", 1 << 22)
            monkeypatch.setattr(base, "PACK_SLAB", 1 << 22)
            assert torch.equal(whole.packed, slabbed.packed), name
            assert whole.n_clipped == slabbed.n_clipped, name
            assert torch.equal(whole.dequantize(), slabbed.dequantize()), name


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([n for n in ALL if QTYPES[n].rules.integer_codes]), rows=st.integers(1, 6),
       cols=st.integers(2, 70), gran=st.sampled_from(["channel", "group"]), sym=st.booleans(),
       sparse=st.booleans(), seed=st.integers(0, 99))
def test_zeroed_columns_dequantise_to_zero_and_the_rest_is_unchanged(name, rows, cols, gran, sym, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) > 0.3)
    qt = QuantizedTensor.from_float(w, name, Layout(gran, group=16), symmetric=sym, sparse=sparse)
    cols_ = torch.randperm(cols, generator=g)[: max(1, cols // 4)]
    keep = torch.ones(cols, dtype=torch.bool).index_fill_(0, cols_, False)
    try:
        z = qt.with_zero_columns(cols_)
    except ValueError as e:  # only where no code is an exact zero (binary: +-1)
        assert "no exact zero" in str(e) and not (qt.dequantize() == 0).any()
        return
    z.validate()
    assert z.mask is None  # stored dense
    d, want = z.dequantize(), qt.dequantize()
    assert torch.equal(d[:, cols_], torch.zeros(rows, len(cols_)))
    assert torch.equal(d[:, keep], want[:, keep])


def test_zeroed_columns_refuse_formats_without_codes():
    qt = QuantizedTensor.from_float(torch.randn(4, 32), "fp16")
    with pytest.raises(ValueError, match="no exact zero"):
        qt.with_zero_columns(torch.tensor([1]))


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["ternary", "int3", "int5", "int2", "uint3", "binary"]), rows=st.integers(1, 30),
       cols=st.integers(1, 70), gran=st.sampled_from(["channel", "group"]), sym=st.booleans(),
       picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=12), seed=st.integers(0, 2**31 - 1))
def test_rows_looked_up_are_the_rows_of_the_whole_dequantisation(name, rows, cols, gran, sym, picks, seed):
    # rows that start inside a byte (ternary: five codes a byte; 3 and 5 bits) are unpacked from the units around
    # them, not from the whole table; duplicates and the last row (its window runs past the stream) included
    gen = torch.Generator().manual_seed(seed)
    layout = Layout("channel") if gran == "channel" else Layout("group", group=8)
    sym = sym or name == "ternary" or name == "binary"
    qt = QuantizedTensor.from_float(torch.randn(rows, cols, generator=gen), name, layout,
                                    symmetric=sym if not name.startswith("u") else False)
    index = torch.tensor([p % rows for p in picks] + [rows - 1]).view(-1, 1)
    assert torch.equal(qt.dequantize_rows(index), qt.dequantize()[index])


@pytest.mark.parametrize("name,layout", [("ternary", Layout("channel")), ("fp16", Layout("tensor"))])
def test_rows_asked_for_are_dequantised_alone(name, layout, monkeypatch):
    """Ternary rows of 384 codes end inside a byte (76.8 bytes a row): unpacked from the units around them. An
    fp16 table has no scale at all (one 'scale' for the whole tensor): its rows are read from their bytes. Neither
    dequantises the whole table for a lookup."""
    qt = QuantizedTensor.from_float(torch.randn(3000, 384), name, layout)
    idx = torch.tensor([[0, 2999], [1234, 7]])
    whole = qt.dequantize()[idx]
    shapes, real = [], QuantizedTensor.dequantize

    def spy(self, *a, **k):
        shapes.append(tuple(self.shape))
        return real(self, *a, **k)

    monkeypatch.setattr(QuantizedTensor, "dequantize", spy)
    assert torch.equal(qt.dequantize_rows(idx), whole)
    assert shapes == [(4, 384)]  # only the four rows asked for


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "uint8", "ternary", "int3"]),
       rows=st.integers(1, 30), cols=st.integers(1, 40), sym=st.booleans(),
       picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=12), seed=st.integers(0, 2**31 - 1))
def test_rows_under_one_scale_for_the_tensor_are_the_rows_of_the_whole(name, rows, cols, sym, picks, seed):
    gen = torch.Generator().manual_seed(seed)
    integer = not name.startswith(("fp", "bf"))
    kw = {"symmetric": sym and not name.startswith("u") or name == "ternary"} if integer else {}
    qt = QuantizedTensor.from_float(torch.randn(rows, cols, generator=gen), name, Layout("tensor"), **kw)
    index = torch.tensor([p % rows for p in picks] + [rows - 1]).view(-1, 1)
    assert torch.equal(qt.dequantize_rows(index), qt.dequantize()[index])
