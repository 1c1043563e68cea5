"""QAT with learned steps and distillation, on the real digits model, converted to packed modules."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError
from bitladder.methods.train.distill import distill_loss, train_classifier
from bitladder.nn.base import QuantModule
from bitladder.methods.train.qat import QAT, FakeQuantLayer, convert, prepare_qat
from bitladder.pipeline.measure.evaluate import fidelity, outputs


@pytest.mark.parametrize("bits,budget", [(2, 3.0), ("ternary", 2.0)])
def test_digits_qat_meets_the_budget_and_converts_exactly(digits_spec, bits, budget, tmp_path):
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    m = prepare_qat(digits_spec.model, QAT(bits=bits))
    train_classifier(m, d["x_train"], d["y_train"], teacher=digits_spec.model, epochs=30, lr=1e-3)
    q = convert(m)
    assert not any(isinstance(x, FakeQuantLayer) for x in q.modules())
    drop = 100 * (base - fidelity(digits_spec, outputs(q, digits_spec.eval_batches), ref)["fidelity"])
    assert drop <= budget
    with torch.no_grad():  # the packed model computes what the fake-quantised one trained
        x = digits_spec.eval_batches[0]
        assert (q(x).argmax(1) == m(x).argmax(1)).float().mean() >= 0.99
    back = bitladder.load(bitladder.save(q, tmp_path / "qat.safetensors"), model=digits.DigitsCNN())
    assert torch.equal(back(x), q(x))


def test_qat_naive_rtn_is_worse_than_qat(digits_spec):
    rtn = bitladder.quantize(digits_spec.model, bitladder.Int(2))
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    assert fidelity(digits_spec, outputs(rtn, digits_spec.eval_batches), ref)["fidelity"] < 0.9


def test_keep_first_last_and_bad_inputs():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    m = prepare_qat(model, QAT(bits=2, keep_first_last=True))
    assert [x.qtype for x in m.modules() if isinstance(x, FakeQuantLayer)] == ["int8", "int2", "int8"]
    with pytest.raises(BitladderError, match="2..8, .ternary. or .binary."):
        QAT(bits=1)
    with pytest.raises(BitladderError, match="temperature must be > 0"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, temperature=0)
    with pytest.raises(BitladderError, match="do not match the teacher"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4), None)


def test_digits_binary_weights_and_activations_with_distillation(digits_spec, tmp_path):
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    m = prepare_qat(digits_spec.model, QAT(bits="binary", keep_first_last=True, binary_act=True))
    train_classifier(m, d["x_train"], d["y_train"], teacher=digits_spec.model, epochs=100, lr=1e-2, alpha=0.9)
    q = convert(m)
    kinds = [(x.qweight.qtype.name, x.qmeta.get("act", {}).get("qtype")) for x in q.modules() if hasattr(x, "qweight")]
    assert kinds == [("int8", None), ("binary", "binary"), ("binary", "binary"), ("binary", "binary"), ("int8", None)]
    drop = 100 * (base - fidelity(digits_spec, outputs(q, digits_spec.eval_batches), ref)["fidelity"])
    assert drop <= 4.0
    back = bitladder.load(bitladder.save(q, tmp_path / "bnn.safetensors"), model=digits.DigitsCNN())
    x = digits_spec.eval_batches[0]
    assert torch.equal(back(x), q(x))
    with pytest.raises(BitladderError, match="binary_act needs bits='binary'"):
        QAT(bits=2, binary_act=True)


@pytest.mark.parametrize("cfg,epochs,budget", [
    (QAT(bits=8, act_bits=8), 5, 0.5),   # measured: 0.00 pt drop
    (QAT(bits=4, act_bits=4), 30, 1.5),  # measured: 0.22 pt drop
    (QAT(bits="ternary", bitnet=True), 30, 2.5),  # measured: 1.11 pt drop
])
def test_digits_activation_qat_converts_to_the_same_function(digits_spec, cfg, epochs, budget, tmp_path):
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    m = prepare_qat(digits_spec.model, cfg)
    train_classifier(m, d["x_train"], d["y_train"], teacher=digits_spec.model, epochs=epochs, lr=1e-3)
    q = convert(m)
    acts = [x.qmeta["act"] for x in q.modules() if hasattr(x, "qweight")]
    assert len(acts) == 5 and all(a["observer"] == ("per-token-absmax" if cfg.bitnet else "lsq") for a in acts)
    # on the reference path the packed model computes exactly what the fake-quantised one trained (steps
    # rounded as stored); an integer kernel (8-bit activations on a VNNI CPU) rounds its float epilogue its own way
    auto = outputs(q, digits_spec.eval_batches)
    policies = {}
    for name, mod in q.named_modules():
        if isinstance(mod, QuantModule):
            policies[name] = mod.kernel_policy
            mod.set_kernel_policy("dequant-fp32")
    assert torch.equal(outputs(q, digits_spec.eval_batches), outputs(m, digits_spec.eval_batches))
    for name, policy in policies.items():
        q.get_submodule(name).set_kernel_policy(policy)
    assert float((auto - outputs(m, digits_spec.eval_batches)).abs().max()) < 1e-3 * float(auto.abs().max())
    drop = 100 * (base - fidelity(digits_spec, outputs(q, digits_spec.eval_batches), ref)["fidelity"])
    assert drop <= budget
    x = digits_spec.eval_batches[0]
    back = bitladder.load(bitladder.save(q, tmp_path / "qat-act.safetensors"), model=digits.DigitsCNN())
    assert torch.equal(back(x), q(x))


def test_first_act_batch_picks_unsigned_after_relu_and_edges_stay_at_8_bits():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    m = prepare_qat(model, QAT(bits=3, act_bits=3, keep_first_last=True))
    m(torch.randn(16, 4))
    assert [x.act.qtype for x in m.modules() if isinstance(x, FakeQuantLayer)] == ["int8", "uint3", "uint8"]
    b = prepare_qat(model, QAT(bits="ternary", bitnet=True, keep_first_last=True))
    assert [(x.qtype, x.bitnet) for x in b.modules() if isinstance(x, FakeQuantLayer)] == [
        ("int8", False), ("ternary", True), ("int8", False)]


@pytest.mark.parametrize("kwargs,message", [
    ({"act_bits": 1}, r"act_bits must be None or 2..8, got 1"),
    ({"act_bits": 9}, r"act_bits must be None or 2..8, got 9"),
    ({"bits": 4, "bitnet": True}, "bitnet=True needs bits='ternary'"),
    ({"bits": "ternary", "bitnet": True, "act_bits": 8}, "act_bits does not combine with binary_act or bitnet"),
    ({"bits": "binary", "binary_act": True, "act_bits": 4}, "act_bits does not combine"),
])
def test_bad_activation_settings(kwargs, message):
    with pytest.raises(BitladderError, match=message):
        QAT(**kwargs)
