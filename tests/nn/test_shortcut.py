"""Bi-Real real-valued shortcuts: projections, records in artifacts, and what they buy a binary network."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError
from bitladder.io.structure import describe
from bitladder.methods.train.distill import train_classifier
from bitladder.methods.train.qat import QAT, FakeQuantLayer, convert, prepare_qat
from bitladder.nn.shortcut import RealShortcut, shortcut_mode
from bitladder.pipeline.measure.evaluate import fidelity, outputs


def test_projections_carry_the_input_past_the_layer():
    x = torch.randn(3, 4)
    zero = nn.Linear(4, 8)
    nn.init.zeros_(zero.weight), nn.init.zeros_(zero.bias)
    assert torch.equal(RealShortcut(zero)(x), torch.cat([x, x], 1))  # tile: channels repeated
    down = nn.Linear(8, 4)
    nn.init.zeros_(down.weight), nn.init.zeros_(down.bias)
    x8 = torch.randn(3, 8)
    assert torch.allclose(RealShortcut(down)(x8), x8.reshape(3, 4, 2).mean(2))  # mean of channel groups
    conv = nn.Conv2d(6, 6, 3, padding=1)
    xc = torch.randn(2, 6, 5, 5)
    assert torch.allclose(RealShortcut(conv)(xc), conv(xc) + xc)


@pytest.mark.parametrize("layer", [nn.Linear(3, 5), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Conv2d(4, 8, 3),
                                   nn.Conv2d(4, 8, 3, padding=1, groups=2)])
def test_layers_without_a_parameter_free_shortcut_are_refused(layer):
    assert shortcut_mode(layer) is None
    with pytest.raises(BitladderError, match="no parameter-free shortcut fits"):
        RealShortcut(layer)


def test_digits_binary_network_with_shortcuts_trains_packs_and_reloads(digits_spec, tmp_path):
    """Binary weights and activations in the middle three layers: with Bi-Real shortcuts 30 epochs
    lose <= 4 pt (measured 1.78; the same run without shortcuts lost 8.22)."""
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    m = prepare_qat(digits_spec.model, QAT(bits="binary", keep_first_last=True, binary_act=True, shortcut=True))
    wrapped = [n for n, x in m.named_modules() if isinstance(x, RealShortcut)]
    assert wrapped == ["features.2", "features.5", "classifier.1"]
    assert all(isinstance(x.layer, FakeQuantLayer) for x in m.modules() if isinstance(x, RealShortcut))
    train_classifier(m, d["x_train"], d["y_train"], teacher=digits_spec.model, epochs=30, lr=1e-2, alpha=0.9)
    q = convert(m)
    drop = 100 * (base - fidelity(digits_spec, outputs(q, digits_spec.eval_batches), ref)["fidelity"])
    assert drop <= 4.0
    path = bitladder.save(q, tmp_path / "bireal.safetensors", structure=describe(q, digits.DigitsCNN()))
    back = bitladder.load(path, model=digits.DigitsCNN())  # the factory's plain CNN, shortcuts rebuilt
    x = digits_spec.eval_batches[0]
    assert [n for n, x in back.named_modules() if isinstance(x, RealShortcut)] == wrapped
    assert torch.equal(back(x), q(x))


def test_trained_binary_linear_runs_on_the_xnor_kernel_and_matches_its_training():
    """A converted binary-weight, binary-input Linear computes sign(x - shift) . sign(w) by XOR and
    popcount: the same values as the fake-quantised layer that was trained (float rounding apart)."""
    from bitladder.kernels import XnorKernel

    if not XnorKernel.available():
        pytest.skip("numba not installed")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 70), nn.ReLU(), nn.Linear(70, 70), nn.ReLU(), nn.Linear(70, 5))
    m = prepare_qat(model, QAT(bits="binary", binary_act=True, keep_first_last=True))
    x = torch.randn(9, 100)
    with torch.no_grad():
        trained = m(x)
        q = convert(m)
        for edge in (q[0], q[4]):  # the int8 edges on their exact path (auto picks int8-activation kernels)
            edge.set_kernel_policy("dequant-fp32")
        y = q(x)
    assert q[2].kernel == "binary-xnor" and q[0].kernel != "binary-xnor"
    torch.testing.assert_close(y, trained, rtol=1e-4, atol=1e-4)
    q[2].set_kernel_policy("dequant-fp32")  # the override: the reference path, same function
    with torch.no_grad():
        torch.testing.assert_close(q(x), y, rtol=1e-4, atol=1e-4)
    assert q[2].kernel != "binary-xnor"
