import pytest

from bitladder import Binary, BitladderError, Float, Int, Ternary
from bitladder.pipeline.ladder.rungs import parse_rung


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


def test_method_and_activation_suffixes():
    from bitladder.methods.quantize.methods import AWQ, GPTQ, HQQ, RTN, Act

    assert parse_rung("int4-g64-gptq") == Int(4, group=64, method=GPTQ())
    assert parse_rung("int3-g64-asym-hqq") == Int(3, group=64, symmetric=False, method=HQQ())
    assert parse_rung("int4-g32-awq-a8") == Int(4, group=32, method=AWQ(), act=Act(bits=8))
    assert parse_rung("int4-g32-clip") == Int(4, group=32, method=RTN(clip_search=True))
    with pytest.raises(BitladderError, match="integer rungs only"):
        parse_rung("fp16-gptq")
    with pytest.raises(BitladderError, match="asymmetric"):
        parse_rung("int4-hqq")


def test_rotation_suffix():
    from bitladder.methods.quantize.methods import GPTQ, Act

    assert parse_rung("int4-g64-gptq-r128") == Int(4, group=64, method=GPTQ(), rotate=128)
    assert parse_rung("int8-a8d-r32") == Int(8, act=Act(bits=8, dynamic=True), rotate=32)
    with pytest.raises(BitladderError, match="integer rungs only"):
        parse_rung("binary-r32")
    with pytest.raises(BitladderError, match="power of two"):
        parse_rung("int4-g64-r48")
