import pytest
import torch
from torch import nn

import bitladder
from bitladder import Binary, BitladderError, Float, Int, Ternary, config_from_dict
from bitladder.nn.base import QuantModule


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
                         nn.Linear(16, 4))


def kinds(model):
    return {n: isinstance(m, QuantModule) for n, m in model.named_modules() if n in ("0", "2.0", "3")}


def test_include_exclude_globs_and_callable():
    assert kinds(bitladder.quantize(small(), Int(8))) == {"0": True, "2.0": True, "3": True}
    assert kinds(bitladder.quantize(small(), Int(8), include=["2.*"])) == {"0": False, "2.0": True, "3": False}
    assert kinds(bitladder.quantize(small(), Int(8), exclude=["0", "3"])) == {"0": False, "2.0": True, "3": False}
    only_out = bitladder.quantize(small(), Int(8), include=lambda n, m: getattr(m, "out_features", 0) == 4)
    assert kinds(only_out) == {"0": False, "2.0": False, "3": True}


def test_original_untouched_unless_inplace():
    m = small()
    bitladder.quantize(m, Int(4, group=8))
    assert not any(isinstance(x, QuantModule) for x in m.modules())
    bitladder.quantize(m, Int(4, group=8), inplace=True)
    assert isinstance(m[0], QuantModule)


def test_plan_lists_layers_kept_in_float():
    p = bitladder.plan(small())
    assert set(p.targets) == {"0", "2.0", "3"} and p.skipped == {"1": "no handler for LayerNorm"}


def test_nan_and_inf_weights_are_named():
    m = small()
    with torch.no_grad():
        m[2][0].weight[0, 0] = float("nan")
        m[3].weight[1, 1] = float("inf")
    with pytest.raises(BitladderError, match=r"layer\(s\): 2\.0, 3"):
        bitladder.quantize(m, Int(8))


@pytest.mark.parametrize("bad,msg", [
    (lambda: Int(bits=9), "bits must be an integer in 2..8"),
    (lambda: Int(bits=1), "use Binary"),
    (lambda: Int(bits=4, group=0), "group must be a positive integer"),
    (lambda: Int(bits=4, granularity="group"), "needs group="),
    (lambda: Float("fp12"), "accepted: fp64"),
    (lambda: Ternary(scale_dtype="int8"), "scale_dtype must be one of"),
])
def test_bad_configs(bad, msg):
    with pytest.raises(BitladderError, match=msg):
        bad()


def test_not_a_config():
    with pytest.raises(BitladderError, match="config must be one of"):
        bitladder.quantize(small(), {"bits": 4})


@pytest.mark.parametrize("cfg", [Int(4, group=64), Int(3, symmetric=False), Float("fp8_e5m2"), Ternary(),
                                 Binary(group=32)])
def test_config_round_trip(cfg):
    assert config_from_dict(cfg.to_dict()) == cfg


def test_config_from_dict_rejects_unknowns():
    with pytest.raises(BitladderError, match="unknown config type"):
        config_from_dict({"type": "Gptq", "version": 1})
    with pytest.raises(BitladderError, match="version"):
        config_from_dict({"type": "Int", "version": 99, "bits": 4})
    with pytest.raises(BitladderError, match="unknown Int fields"):
        config_from_dict({"type": "Int", "version": 1, "bitz": 4})
