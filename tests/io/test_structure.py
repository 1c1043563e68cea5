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


def test_damaged_records_stop_before_memory_or_a_forward():
    ref = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Linear(8, 2))
    conv = {"in_channels": 4, "out_channels": 6, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "groups": 1, "bias": True, "padding_mode": "zeros"}
    rebuild(ref, [{"name": "0", "type": "Conv2d", "args": conv}])  # pruned to 6 channels: fine
    with pytest.raises(BitladderError, match="gives stride \\[2, 2\\], the model's layer has \\[1, 1\\]"):
        rebuild(ref, [{"name": "0", "type": "Conv2d", "args": {**conv, "stride": [2, 2]}}])
    huge = {"in_features": 2**30, "out_features": 2**30, "bias": False}  # 4 EiB of fp32, asked of a small file
    with pytest.raises(BitladderError, match="more than|at most 1,000"):
        rebuild(ref, [{"name": "2", "type": "Linear", "args": huge}], max_numel=1000)
    with pytest.raises(BitladderError, match="is invalid: ValueError"):  # torch's own check, in one line
        rebuild(ref, [{"name": "0", "type": "Conv2d", "args": {**conv, "groups": 5}}])
