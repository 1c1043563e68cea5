import pytest
import torch
from torch import nn

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.artifact import load, save
from bitladder.io.structure import describe, rebuild
from bitladder.methods.lowrank.svd import LowRank, factorize
from bitladder.methods.prune.structured import ChannelPrune, prune_channels
from bitladder.methods.quantize.configs import Int


def test_channel_pruned_quantised_digits_reloads_from_the_factory_alone(digits_spec, tmp_path):
    x = digits_spec.eval_batches[0]
    pruned, _ = prune_channels(digits_spec.model, ChannelPrune(ratio=0.5), x[:8])
    q = bitladder.quantize(pruned, Int(bits=8))
    path = save(q, tmp_path / "p.safetensors", source="digits", structure=describe(pruned, digits_spec.fresh_model()))
    back = bitladder.load(path)  # rebuilt from the built-in factory + the recorded structure
    assert torch.equal(back(x), q(x))
    assert back.features[0].qweight.shape[0] < digits_spec.model.features[0].out_channels


def test_factorised_layers_are_recorded_and_rebuilt():
    ref = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    f = factorize(ref, LowRank(param_ratio=0.25))
    recs = describe(f, ref)
    assert [(r["name"], r["type"]) for r in recs] == [("0", "FactorizedLinear"), ("2", "FactorizedLinear")]
    again = rebuild(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)), recs)
    again.load_state_dict(f.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(again(x), f(x))


def test_unchanged_model_has_no_records_and_unknown_types_are_named():
    ref = nn.Sequential(nn.Linear(4, 4))
    assert describe(ref, ref) == []
    with pytest.raises(BitladderError, match="GRU"):
        describe(nn.Sequential(nn.GRU(4, 4)), ref)
    with pytest.raises(BitladderError, match="does not have"):
        rebuild(ref, [{"name": "x.y", "type": "Linear", "args": {"in_features": 1, "out_features": 1}}])


def test_the_io_layer_alone_asks_for_the_float_model(digits_spec, tmp_path):
    path = save(bitladder.quantize(digits_spec.model, Int(bits=8)), tmp_path / "q.safetensors", source="digits")
    with pytest.raises(BitladderError, match="needs its float model"):
        load(path)  # io does not reach up into the zoo; bitladder.load does
    assert isinstance(bitladder.load(path), type(digits_spec.model))
