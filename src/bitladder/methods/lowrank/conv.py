"""Factorised convolutions: Tucker-2 (1x1 -> k x k core -> 1x1) and depthwise-separable substitution
(depthwise k x k -> pointwise 1x1), initialised from a decomposition of the dense kernel.

Tucker-2 (Kim et al. 2016): the kernel W (out, in, kh, kw) is reduced along its output and input modes
by truncated HOSVD, ``W ~ core x1 U_out x2 U_in``; ranks by energy kept per mode or a parameter ratio.
Depthwise-separable: for every input channel i, the slice ``W[:, i]`` (out x kh*kw) is replaced by its
best rank-1 approximation ``p_i d_i^T``: ``d_i`` becomes the depthwise filter and ``p_i`` the pointwise
column, the least-squares closest separable conv; distillation recovers the rest.

>>> import torch
>>> conv = torch.nn.Conv2d(32, 32, 3, padding=1)
>>> conv.weight.data = torch.einsum("rskl,or,is->oikl", torch.randn(4, 4, 3, 3), torch.randn(32, 4), torch.randn(32, 4))
>>> t = factorize_convs(torch.nn.Sequential(conv), ConvFactor(kind="tucker2", energy=0.9999))[0]
>>> x = torch.randn(2, 32, 6, 6)
>>> t.ranks, torch.allclose(t(x), conv(x), atol=1e-3)
([4, 4], True)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.select import Selector, selected
from bitladder.nn.factorized import FactorizedConv2d

log = logging.getLogger("bitladder")
KINDS = ("tucker2", "separable")


@dataclass(frozen=True)
class ConvFactor:
    """``kind``: "tucker2" (ranks by ``energy`` per mode, or ``param_ratio``) or "separable"."""

    kind: str = "tucker2"
    energy: float | None = 0.9
    param_ratio: float | None = None
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BitladderError(f"unknown conv factorisation {self.kind!r}; accepted: {', '.join(KINDS)}")
        if self.param_ratio is not None:
            object.__setattr__(self, "energy", None)
            if not 0 < self.param_ratio < 1:
                raise BitladderError(f"param_ratio must be in (0, 1), got {self.param_ratio}")
        elif self.energy is None or not 0 < self.energy <= 1:
            raise BitladderError(f"energy must be in (0, 1], got {self.energy}")

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "ConvFactor", "version": self.version, **asdict(self)}


def _rank(s: torch.Tensor, energy: float) -> int:
    e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp(min=1e-30)
    return int(torch.searchsorted(e, torch.tensor(energy, dtype=torch.float64) - 1e-12)) + 1


@torch.no_grad()
def _tucker2(conv: nn.Conv2d, cfg: ConvFactor) -> FactorizedConv2d | None:
    w = conv.weight.detach().double()
    o, i, kh, kw = w.shape
    u_out, s_out, _ = torch.linalg.svd(w.reshape(o, -1), full_matrices=False)
    u_in, s_in, _ = torch.linalg.svd(w.transpose(0, 1).reshape(i, -1), full_matrices=False)
    if cfg.param_ratio is not None:  # same fraction of each mode: r_o*r_i*k + r_i*i + r_o*o = ratio * o*i*k
        k = kh * kw
        lo, hi = 0.0, 1.0
        for _ in range(40):
            f = (lo + hi) / 2
            ro, ri = max(1, round(f * o)), max(1, round(f * i))
            lo, hi = (f, hi) if ro * ri * k + ri * i + ro * o <= cfg.param_ratio * o * i * k else (lo, f)
        r_o, r_i = max(1, round(lo * o)), max(1, round(lo * i))
    else:
        r_o, r_i = min(_rank(s_out, cfg.energy), o), min(_rank(s_in, cfg.energy), i)
    if r_o * r_i * kh * kw + r_i * i + r_o * o >= o * i * kh * kw:
        return None
    uo, ui = u_out[:, :r_o], u_in[:, :r_i]
    core = torch.einsum("oikl,or,is->rskl", w, uo, ui)
    f = FactorizedConv2d("tucker2", i, o, list(conv.kernel_size), list(conv.stride), list(conv.padding),
                         list(conv.dilation), [r_i, r_o], conv.bias is not None)
    f.first.weight.copy_(ui.T.reshape(r_i, i, 1, 1).float())
    f.core.weight.copy_(core.float())
    f.last.weight.copy_(uo.reshape(o, r_o, 1, 1).float())
    if conv.bias is not None:
        f.last.bias.copy_(conv.bias)
    return f


@torch.no_grad()
def _separable(conv: nn.Conv2d) -> FactorizedConv2d | None:
    w = conv.weight.detach().double()
    o, i, kh, kw = w.shape
    if kh * kw == 1 or i * kh * kw + o * i >= o * i * kh * kw:
        return None
    f = FactorizedConv2d("separable", i, o, list(conv.kernel_size), list(conv.stride), list(conv.padding),
                         list(conv.dilation), [], conv.bias is not None)
    u, s, vh = torch.linalg.svd(w.transpose(0, 1).reshape(i, o, kh * kw), full_matrices=False)  # batched per i
    f.first.weight.copy_((vh[:, 0, :] * s[:, :1]).reshape(i, 1, kh, kw).float())
    f.last.weight.copy_(u[:, :, 0].T.reshape(o, i, 1, 1).float())
    if conv.bias is not None:
        f.last.bias.copy_(conv.bias)
    return f


def factorize_convs(model: nn.Module, config: ConvFactor, include: Selector = None, exclude: Selector = None,
                    inplace: bool = False) -> nn.Module:
    """Replace selected Conv2d layers (groups 1) by factorised ones where that saves parameters."""
    model = model if inplace else copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not (isinstance(m, nn.Conv2d) and name and m.groups == 1 and selected(name, m, include, exclude)):
            continue
        if m.padding_mode != "zeros":
            log.info("conv factorisation: %s kept (padding mode %s)", name, m.padding_mode)
            continue
        new = _tucker2(m, config) if config.kind == "tucker2" else _separable(m)
        if new is None:
            log.info("conv factorisation: %s kept dense (no parameter saving)", name)
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
