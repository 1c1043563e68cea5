"""Artifact metadata validation: each damaged field is named in one line, before anything is built from it."""

import pytest

from bitladder.errors import BitladderError
from bitladder.io.meta_check import check_meta, check_record

LAYER = {"handler": "QuantConv2d", "qtype": "int8", "shape": [16, 1, 3, 3], "kernel": "auto", "method": "rtn",
         "layout": {"granularity": "channel", "axis": 0, "group": None}, "scale_dtype": "float16"}
CONV = {"name": "features.2", "type": "FactorizedConv2d",
        "args": {"kind": "separable", "in_channels": 16, "out_channels": 32, "kernel_size": [3, 3],
                 "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "ranks": [], "bias": True}}


def meta(**layer):
    return {"format_version": 1, "source": "digits", "config": {"type": "Int"}, "layers": {"f.0": {**LAYER, **layer}}}


def test_real_metadata_passes():
    check_meta(meta())
    check_meta({**meta(), "structure": [CONV]})
    check_record(CONV)
    check_record({"name": "l", "type": "Rotated", "args": {"block": 64, "inner": {
        "type": "Linear", "args": {"in_features": 256, "out_features": 8, "bias": True}}}})


@pytest.mark.parametrize("edit, needles", [
    ({"shape": [16, -1, 3, 3]}, ["layer 'f.0'", "shape must be a list of 1 to 8 integers"]),
    ({"shape": [2**63]}, ["shape"]),
    ({"shape": "16x1"}, ["shape"]),
    ({"qtype": ["int8"]}, ["qtype must be one of", "int4"]),
    ({"handler": None}, ["handler must be a handler class name"]),
    ({"handler": "[/x]"}, ["handler"]),
    ({"layout": {"granularity": "channel", "axis": 0}}, ["layout must be an object with granularity, axis and group"]),
    ({"layout": {"granularity": "group", "axis": 0, "group": None}}, ["layout group must be a positive group size"]),
    ({"layout": {"granularity": "channel", "axis": 4, "group": None}}, ["layout axis must be an axis of the 4-d"]),
    ({"layout": {"granularity": "row", "axis": 0, "group": None}}, ["granularity must be one of tensor"]),
    ({"kernel": "fastest"}, ["kernel must be a kernel policy"]),
    ({"in_scale": 10**12}, ["in_scale must be the number of input channels"]),
    ({"outliers": 0}, ["outliers must be the number of outlier input channels"]),
    ({"outliers": "16"}, ["outliers must be the number of outlier input channels"]),
    ({"act": {"qtype": "binary", "observer": "learned-shift"}}, ["act channels"]),
    ({"act": {"qtype": "int8", "dynamic": "row"}}, ["act must be an object with dynamic null or 'token'"]),
])
def test_each_bad_layer_field_is_named(edit, needles):
    with pytest.raises(BitladderError) as e:
        check_meta(meta(**edit))
    assert len(str(e.value).splitlines()) == 1
    for n in needles:
        assert n in str(e.value), str(e.value)


@pytest.mark.parametrize("top, needle", [
    ({"source": "[/x]"}, "source must be null or a model name"),
    ({"config": [1]}, "config must be null or an object"),
    ({"structure": {}}, "structure must be a list"),
    ({"layers": {"a..b": LAYER}}, "a layer name is a dotted module path"),
])
def test_bad_top_level_fields(top, needle):
    with pytest.raises(BitladderError, match=needle):
        check_meta({**meta(), **top})


@pytest.mark.parametrize("args, needle", [
    ({"stride": [1, None]}, "stride must be a list of integers"),
    ({"stride": [1]}, "stride must be a list of 2 for FactorizedConv2d"),
    ({"padding": [-1, 1]}, "padding must be 'same', 'valid' or a list of integers >= 0"),
    ({"in_channels": True}, "in_channels must be an integer"),
    ({"bias": 1}, "bias must be true or false"),
    ({"kind": "cp"}, "kind must be one of tucker2, separable"),
])
def test_bad_structure_args_are_named(args, needle):
    with pytest.raises(BitladderError, match=needle):
        check_record({**CONV, "args": {**CONV["args"], **args}})


def test_a_rotation_block_must_divide_the_layer():
    inner = {"type": "Linear", "args": {"in_features": 96, "out_features": 8, "bias": True}}
    with pytest.raises(BitladderError, match="block must be a power of two that divides"):
        check_record({"name": "l", "type": "Rotated", "args": {"block": 64, "inner": inner}})
    with pytest.raises(BitladderError, match="each record must be an object with a module path"):
        check_record({"name": "", "type": "Linear", "args": {}})
