"""Low-rank factorisation of Linear layers by truncated SVD: ``W ~ B @ A`` with ``A = sqrt(S) V^T``
(r x in) and ``B = U sqrt(S)`` (out x r), as two real Linear layers (so they quantise like any other).

The rank is chosen per layer by the energy kept (``sum S[:r]^2 / sum S^2 >= energy``) or by a parameter
budget (``param_ratio`` of the dense layer's weights). Layers where the factorisation would not save
parameters are left dense (and logged). With calibration batches the factors are data-aware: they
minimise the error of each layer's outputs on the inputs it sees (:mod:`whiten`), and the energy is
that of the outputs.

>>> import torch
>>> lin = torch.nn.Linear(64, 64)
>>> lin.weight.data = torch.randn(64, 4) @ torch.randn(4, 64)   # rank 4
>>> f = factorize(lin, LowRank(energy=0.999))
>>> f.rank, torch.allclose(f(torch.ones(2, 64)), lin(torch.ones(2, 64)), atol=1e-3)
(4, True)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.lowrank.whiten import cholesky_factor, input_grams
from bitladder.nn.select import Selector, selected
from bitladder.nn.factorized import FactorizedLinear

log = logging.getLogger("bitladder")


@dataclass(frozen=True)
class LowRank:
    """Truncated-SVD factorisation; give ``energy`` (fraction of squared singular values kept, 0.9 by
    default) or ``param_ratio`` (parameters of the factors / parameters of the dense weight)."""

    energy: float | None = None
    param_ratio: float | None = None
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.energy is None and self.param_ratio is None:
            object.__setattr__(self, "energy", 0.9)  # the default: keep 90 % of the energy
        if self.energy is not None and self.param_ratio is not None:
            raise BitladderError("LowRank needs exactly one of energy= or param_ratio=")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise BitladderError(f"energy must be in (0, 1], got {self.energy}")
        if self.param_ratio is not None and not 0 < self.param_ratio < 1:
            raise BitladderError(f"param_ratio must be in (0, 1), got {self.param_ratio}")

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "LowRank", "version": self.version, **asdict(self)}

    def rank(self, s: torch.Tensor, out_f: int, in_f: int) -> int:
        """Rank to keep: ``param_ratio`` of the dense parameter count if set, else the least reaching ``energy``."""
        if self.param_ratio is not None:
            return max(1, int(self.param_ratio * out_f * in_f / (out_f + in_f)))
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp(min=1e-30)
        return int(torch.searchsorted(e, torch.tensor(self.energy, dtype=torch.float64) - 1e-12)) + 1


def factorize(model: nn.Module, config: LowRank, include: Selector = None, exclude: Selector = None,
              inplace: bool = False, calib: list | None = None) -> nn.Module:
    """Replace selected Linear layers by their rank-r factors where that saves parameters.

    ``calib`` (input batches, as for ``quantize``) makes the factors data-aware: a much better start for
    distillation than the weights alone (measured on MiniLM: docs/DESIGN.md, 'Measured on MiniLM').
    """
    model = model if inplace else copy.deepcopy(model)
    if isinstance(model, nn.Linear):
        grams = input_grams(nn.Sequential(model), ["0"], calib) if calib else {}
        return _factor(model, config, "<model>", grams.get("0")) or model
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n and selected(n, m, include, exclude)]
    grams = input_grams(model, names, calib) if calib else {}
    for name in names:
        new = _factor(model.get_submodule(name), config, name, grams.get(name))
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


@torch.no_grad()
def _factor(lin: nn.Linear, config: LowRank, name: str, gram: torch.Tensor | None = None) -> FactorizedLinear | None:
    w = lin.weight.detach().double()
    chol = None if gram is None else cholesky_factor(gram)
    u, s, vh = torch.linalg.svd(w if chol is None else w @ chol, full_matrices=False)
    r = min(config.rank(s, *w.shape), s.numel())
    if r * (w.shape[0] + w.shape[1]) >= w.numel():
        log.info("low-rank: %s kept dense (rank %d saves nothing)", name, r)
        return None
    root = s[:r].sqrt()
    first = root[:, None] * vh[:r]
    if chol is not None:  # (sqrt(S) V^T) L^-1
        first = torch.linalg.solve_triangular(chol, first, upper=False, left=False)
    f = FactorizedLinear(w.shape[1], w.shape[0], r, lin.bias is not None)
    f.first.weight.copy_(first.float())
    f.second.weight.copy_((u[:, :r] * root[None, :]).float())
    if lin.bias is not None:
        f.second.bias.copy_(lin.bias)
    return f
