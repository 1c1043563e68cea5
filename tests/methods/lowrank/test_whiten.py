"""Data-aware low-rank factors: at the same rank, the SVD of ``W L`` (``X^T X = L L^T``) fits the layer's
outputs on its inputs far better than the SVD of ``W``; padding rows are left out of the statistics."""

import pytest
import torch
from torch import nn

from bitladder import BitladderError, LowRank, factorize
from bitladder.methods.lowrank.svd import FactorizedLinear
from bitladder.methods.lowrank.whiten import input_grams


def _inputs(n: int, seed: int) -> torch.Tensor:
    """Inputs spanning 8 of 64 directions, with very different scales: a low-rank input distribution."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))[0]
    return (torch.randn(n, 8, generator=g) * torch.logspace(0, 2, 8)) @ basis.T


def _err(model, x, ref):
    with torch.no_grad():
        return float((model(x) - ref(x)).norm() / ref(x).norm())


def test_data_aware_factors_fit_the_outputs_the_weights_alone_cannot():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16))
    calib, held_out = [_inputs(256, 1), _inputs(256, 2)], _inputs(512, 3)
    cfg = LowRank(param_ratio=0.25)  # rank 8 for the first layer
    plain, aware = factorize(model, cfg, include=["0"]), factorize(model, cfg, include=["0"], calib=calib)
    assert isinstance(aware[0], FactorizedLinear) and aware[0].rank == plain[0].rank == 8
    assert _err(aware, held_out, model) < 1e-3 < 0.1 < _err(plain, held_out, model)
    assert not isinstance(aware[2], FactorizedLinear)  # not selected: untouched


def test_a_single_layer_and_energy_ranks_count_output_energy():
    lin = nn.Linear(64, 64)
    f = factorize(lin, LowRank(energy=0.99999), calib=[_inputs(300, 4)])
    assert f.rank <= 8  # the inputs live in 8 directions: 8 output directions carry all the energy
    assert _err(f, _inputs(100, 5), lin) < 1e-3


class Tok(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x, attention_mask):
        return self.proj(x)


def test_padding_rows_are_left_out_and_bad_batches_are_named():
    model = Tok()
    x = torch.ones(2, 3, 4)
    x[1, 2] = 100.0  # a padding row that must not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    g = input_grams(model, ["proj"], [{"x": x, "attention_mask": mask}])["proj"]
    assert torch.allclose(g, torch.full((4, 4), 5.0, dtype=torch.float64))  # five rows of ones
    with pytest.raises(BitladderError, match="calibration batch 0 does not fit"):
        input_grams(model, ["proj"], [torch.ones(2, 4)])
