import pytest
import torch
from torch import nn

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.artifact import save
from bitladder.io.structure import describe
from bitladder.methods.lowrank.conv import ConvFactor, FactorizedConv2d, factorize_convs
from bitladder.methods.quantize.configs import Int
from bitladder.methods.train.trainer import Train, fit


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (1, 2)])
def test_separable_is_exact_for_a_separable_kernel(stride, padding):
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding)
    d, p = torch.randn(6, 3, 3), torch.randn(10, 6)
    conv.weight.data = p[:, :, None, None] * d[None]  # W[o, i] = p[o, i] * d[i]
    f = factorize_convs(nn.Sequential(conv), ConvFactor(kind="separable"))[0]
    x = torch.randn(2, 6, 9, 7)
    assert isinstance(f, FactorizedConv2d) and f.first.groups == 6
    assert torch.allclose(f(x), conv(x), atol=1e-4) and params(f) < params(conv)


def test_tucker2_param_ratio_and_energy_one_keeps_dense():
    conv = nn.Conv2d(32, 64, 3, padding=1)
    f = factorize_convs(nn.Sequential(conv), ConvFactor(param_ratio=0.3))[0]
    assert isinstance(f, FactorizedConv2d) and 0.2 < params(f) / params(conv) <= 0.31
    dense = factorize_convs(nn.Sequential(conv), ConvFactor(energy=1.0))[0]
    assert dense is not conv and isinstance(dense, nn.Conv2d)  # full rank saves nothing: kept


def test_bad_configs():
    with pytest.raises(BitladderError, match="unknown conv factorisation"):
        ConvFactor(kind="cp")
    with pytest.raises(BitladderError, match="energy must be in"):
        ConvFactor(energy=0.0)
    with pytest.raises(BitladderError, match="param_ratio must be in"):
        ConvFactor(param_ratio=1.5)


def test_digits_separable_recovers_with_distillation_and_reloads(digits_spec, tmp_path):
    x, y = digits_spec.eval_batches[0], digits_spec.targets
    m = factorize_convs(digits_spec.model, ConvFactor(kind="separable"), include=["features.2", "features.5"])
    fit(m, digits_spec.train_batches, digits_spec.train_targets, Train(epochs=12, lr=2e-3), teacher=digits_spec.model)
    acc = float((m(x).argmax(1) == y).float().mean())
    assert acc >= 0.95 and params(m) < 0.6 * params(digits_spec.model)  # measured 0.971 at 15 epochs
    q = bitladder.quantize(m, Int(8))
    path = save(q, tmp_path / "s.safetensors", source="digits", structure=describe(m, digits_spec.fresh_model()))
    assert torch.equal(bitladder.load(path)(x), q(x))
