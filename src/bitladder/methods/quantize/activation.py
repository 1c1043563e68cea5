"""Activation calibration: SmoothQuant's channel scales, and static scales from observers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.calibrate import Collector, SampleCollector, blockwise
from bitladder.methods.quantize.methods import Act
from bitladder.methods.quantize.observers import make_observer
from bitladder.nn.base import QuantModule


def _fake_act(x: torch.Tensor, bits: int) -> torch.Tensor:
    lo, hi = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
    s = max(hi - lo, 1e-8) / (2**bits - 1)
    z = round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1) - z) * s


def search_alpha(w: torch.Tensor, x: torch.Tensor, amax: torch.Tensor, fake_w, bits: int,
                 grid: int = 11) -> tuple[float, torch.Tensor]:
    """The SmoothQuant alpha (and its scale) minimising this layer's output error on ``x``."""
    ref = x @ w.T
    wmax = w.abs().amax(dim=0).clamp(min=1e-5)
    best = (float("inf"), 0.0, torch.ones_like(wmax))
    for i in range(grid):
        alpha = i / (grid - 1)
        s = (amax.clamp(min=1e-5).pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)
        err = float((_fake_act(x / s, bits) @ fake_w(w * s).T - ref).pow(2).mean())
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2]


class ObserverCollector(Collector):
    def __init__(self, module: nn.Module, observer: str) -> None:
        self.module, self.observer = module, make_observer(observer)

    def update(self, x: torch.Tensor) -> None:
        s = getattr(self.module, "in_scale", None)
        if s is not None and x.shape[-1] == s.numel():
            x = x * s
        self.observer.update(x)


def linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def smooth(model: nn.Module, names: list[str], calib: list[Any], alpha: float | str, bits: int = 8,
           fake_w=None) -> dict[str, torch.Tensor]:
    """SmoothQuant on the float layers in ``names`` (Linear-like only): scales weights in place and
    returns the per-channel input multiplier ``1/s`` for each layer.

    Until the layer is swapped for its quantised version, a forward pre-hook applies ``1/s`` to its
    input, so the float model computes the same function and later calibration sees smoothed inputs.
    """
    names = [n for n in names if linear_like(model.get_submodule(n))]
    out: dict[str, torch.Tensor] = {}

    def apply(name: str, module: nn.Module, c: SampleCollector) -> None:
        if c.amax is None:
            return
        in_axis = 0 if type(module).__name__ == "Conv1D" else 1
        if alpha == "auto":
            w = module.weight.detach().float()
            _, s = search_alpha(w if in_axis == 1 else w.T, c.sample(), c.amax, fake_w, bits)
        else:
            wmax = module.weight.detach().abs().amax(dim=1 - in_axis).clamp(min=1e-5)
            s = (c.amax.clamp(min=1e-5).pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)
        with torch.no_grad():
            shape = [1, 1]
            shape[in_axis] = -1
            module.weight.mul_(s.reshape(shape).to(module.weight.dtype))
        out[name] = 1.0 / s
        inv = (1.0 / s).to(module.weight.dtype)
        module.register_forward_pre_hook(lambda _m, args: (args[0] * inv, *args[1:]))

    blockwise(model, names, calib, lambda n, m: SampleCollector(2048), apply)
    return out


def calibrate_activations(model: nn.Module, names: list[str], act: Act, calib: list[Any]) -> None:
    """Give every quantised layer in ``names`` a static input scale and zero point."""
    qtype = get_qtype(act.qtype)
    names = [n for n in names if isinstance(model.get_submodule(n), QuantModule)
             and not isinstance(model.get_submodule(n), nn.Embedding)
             and type(model.get_submodule(n)).__name__ != "QuantEmbedding"]

    def apply(name: str, module: QuantModule, c: ObserverCollector) -> None:
        scale, zp = c.observer.qparams(qtype, act.symmetric)
        module.set_act(qtype.name, scale, zp, act.observer)

    blockwise(model, names, calib, lambda n, m: ObserverCollector(m, act.observer), apply)
