"""Pruning that really shrinks: exact zeros, bitmask storage, fine-tuning that keeps them zero."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder import NM, BitladderError, Float, Int, Magnitude
from bitladder.methods.prune.finetune import finetune_classifier
from bitladder.methods.prune.magnitude import sparsity
from bitladder.pipeline.measure.evaluate import fidelity, outputs


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_sparsity_per_layer_and_global(scope):
    m = net()
    with torch.no_grad():
        m[2].weight.mul_(10)  # global pruning then spares the large layer
    p = bitladder.prune(m, Magnitude(0.75, scope=scope))
    s = sparsity(p)
    total = sum(p.get_submodule(n).weight.numel() * f for n, f in s.items()) / sum(
        p.get_submodule(n).weight.numel() for n in s)
    assert total == pytest.approx(0.75, abs=0.01)
    if scope == "layer":
        assert all(f == pytest.approx(0.75, abs=0.01) for f in s.values())
    else:
        assert s["2"] < 0.2 and s["0"] > 0.8
    assert sparsity(m) == {"0": 0.0, "2": 0.0}  # the original is untouched


def test_nm_pattern_and_skips_odd_layers():
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 16))
    p = bitladder.prune(m, NM(2, 4))
    w = p[2].weight.reshape(16, -1, 4)
    assert bool(((w != 0).sum(-1) <= 2).all())
    assert float((p[0].weight == 0).float().mean()) == 0.0  # 1x3x3 = 9 inputs: not a multiple of 4


def test_sparse_storage_shrinks_and_round_trips(tmp_path):
    p = bitladder.prune(net(), Magnitude(0.8))
    dense = bitladder.quantize(net(), Float("fp32"))
    sparse = bitladder.quantize(p, Float("fp32"))
    assert sparse[0].qweight.mask is not None
    assert dense[0].qweight.nbytes / sparse[0].qweight.nbytes > 3.5  # 32 bits -> 1 + 0.2 * 32
    q4 = bitladder.quantize(p, Int(4, group=32))
    x = torch.randn(8, 64)
    with torch.no_grad():
        assert torch.equal(q4[0].weight() == 0, p[0].weight == 0)  # zeros stay exact zeros
        back = bitladder.load(bitladder.save(q4, tmp_path / "s.safetensors"), model=net())
        assert torch.equal(back(x), q4(x))
    qt = q4[0].qweight
    assert abs(qt.nbytes - qt.theoretical_nbytes) <= 2


def test_dense_when_sparse_would_be_larger():
    p = bitladder.prune(net(), Magnitude(0.3))
    assert bitladder.quantize(p, Int(2, group=32, symmetric=False))[0].qweight.mask is None  # 30 % < 1/2
    assert bitladder.quantize(p, Float("fp16"))[0].qweight.mask is not None  # 30 % > 1/16


def test_digits_80_percent_recovers_with_finetuning(digits_spec):
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    p = bitladder.prune(digits_spec.model, Magnitude(0.8, scope="global"))
    finetune_classifier(p, d["x_train"], d["y_train"], epochs=15)
    sizes = {n: p.get_submodule(n).weight.numel() for n in sparsity(p)}
    overall = sum(sizes[n] * f for n, f in sparsity(p).items()) / sum(sizes.values())
    assert overall == pytest.approx(0.8, abs=0.005)
    drop = 100 * (base - fidelity(digits_spec, outputs(p, digits_spec.eval_batches), ref)["fidelity"])
    assert drop <= 1.0
    dense = bitladder.quantize(digits_spec.model, Float("fp32"))
    sparse = bitladder.quantize(p, Float("fp32"))
    ratio = sum(m.qweight.nbytes for m in dense.modules() if hasattr(m, "qweight")) / sum(
        m.qweight.nbytes for m in sparse.modules() if hasattr(m, "qweight"))
    assert ratio >= 3.0


@pytest.mark.parametrize("bad,msg", [(lambda: Magnitude(1.0), r"\[0, 1\)"), (lambda: Magnitude(-0.1), r"\[0, 1\)"),
                                     (lambda: Magnitude(0.5, scope="row"), "scope"), (lambda: NM(4, 4), "0 < n < m")])
def test_bad_pruning_configs(bad, msg):
    with pytest.raises(BitladderError, match=msg):
        bad()
