import pytest

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import QTYPES, get_qtype


def test_table_covers_the_ladder():
    for name in ("fp64", "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "int3", "int2",
                 "uint4", "uint2", "ternary", "binary"):
        assert name in QTYPES


@pytest.mark.parametrize("bits", range(2, 9))
def test_integer_ranges(bits):
    s, u = QTYPES[f"int{bits}"], QTYPES[f"uint{bits}"]
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (u.qmin, u.qmax, u.levels) == (0, 2**bits - 1, 2**bits)


def test_float_limits():
    assert QTYPES["fp8_e4m3"].fmax == 448.0
    assert QTYPES["fp8_e5m2"].fmax == 57344.0
    assert QTYPES["bf16"].bits == 16


def test_unknown_format_lists_known():
    with pytest.raises(BitladderError, match="known: fp64"):
        get_qtype("int9")
