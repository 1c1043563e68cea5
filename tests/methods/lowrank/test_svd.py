import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Int, LowRank, factorize
from bitladder.methods.lowrank.svd import FactorizedLinear


def params(m):
    return sum(p.numel() for p in m.parameters())


def test_energy_rank_is_exact_on_low_rank_weights():
    lin = nn.Linear(96, 80)
    lin.weight.data = torch.randn(80, 6) @ torch.randn(6, 96)
    f = factorize(lin, LowRank(energy=0.9999))
    assert isinstance(f, FactorizedLinear) and f.rank == 6
    x = torch.randn(5, 96)
    assert torch.allclose(f(x), lin(x), atol=1e-3)


def test_param_ratio_halves_and_error_falls_with_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    half = factorize(model, LowRank(param_ratio=0.5))
    lin_params = 128 * 256 * 2
    fact = sum(m.first.weight.numel() + m.second.weight.numel() for m in half.modules()
               if isinstance(m, FactorizedLinear))
    assert fact <= 0.5 * lin_params
    x = torch.randn(64, 128)
    errs = [float((factorize(model, LowRank(param_ratio=r))(x) - model(x)).pow(2).mean()) for r in (0.2, 0.5, 0.9)]
    assert errs[0] > errs[1] > errs[2]


def test_factors_quantise_and_save(tmp_path):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    f = factorize(model, LowRank(param_ratio=0.4), include=["0"])
    q = bitladder.quantize(f, Int(4, group=16))
    assert type(q[0].first).__name__ == "QuantLinear" and type(q[0].second).__name__ == "QuantLinear"
    back = bitladder.load(bitladder.save(q, tmp_path / "f.safetensors"), model=factorize(model, LowRank(param_ratio=0.4), include=["0"]))
    x = torch.randn(3, 64)
    assert torch.equal(back(x), q(x))


def test_no_saving_keeps_dense_and_bad_configs():
    lin = nn.Linear(4, 4)
    assert factorize(lin, LowRank(energy=1.0)) is not None and isinstance(factorize(lin, LowRank(energy=1.0)), nn.Linear)
    with pytest.raises(BitladderError, match="exactly one"):
        LowRank(energy=0.9, param_ratio=0.5)
    with pytest.raises(BitladderError, match="param_ratio"):
        LowRank(energy=None, param_ratio=1.5)
