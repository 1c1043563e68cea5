import pytest

from bitladder import Binary, BitladderError, Float, Int, Ternary
from bitladder.pipeline.rungs import parse_rung


@pytest.mark.parametrize("name,cfg", [
    ("fp16", Float("fp16")), ("fp8_e5m2", Float("fp8_e5m2")), ("int8", Int(8)),
    ("int8-pt", Int(8, granularity="tensor")), ("int4-g64", Int(4, group=64)),
    ("int2-g32-asym", Int(2, group=32, symmetric=False)), ("ternary", Ternary()), ("binary-g64", Binary(group=64)),
])
def test_parse(name, cfg):
    assert parse_rung(name) == cfg


@pytest.mark.parametrize("bad", ["int9", "int1", "fp12", "int4-g0", "fp16-asym", "binary-sym", "int4_g64", ""])
def test_unknown_rungs_say_what_is_accepted(bad):
    with pytest.raises(BitladderError, match="accepted|at least 1|integer rungs"):
        parse_rung(bad)
