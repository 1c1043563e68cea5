"""Activation calibration: SmoothQuant's channel scales, and static scales from observers."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.calibrate import Collector, SampleCollector, blockwise
from bitladder.methods.quantize.methods import Act
from bitladder.methods.quantize.observers import make_observer
from bitladder.methods.quantize.rtn import rtn_tensor
from bitladder.methods.quantize.transforms import Pass, Transform, transform
from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding, QuantLinear
from bitladder.nn.records import in_axis as weight_in_axis
from bitladder.nn.records import is_conv1d


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
    """Feeds a layer's inputs (times its SmoothQuant ``in_scale``, if set) to an activation observer."""
    def __init__(self, module: nn.Module, observer: str) -> None:
        self.module, self.observer = module, make_observer(observer)

    def update(self, x: torch.Tensor) -> None:
        s = getattr(self.module, "in_scale", None)
        if s is not None and x.shape[-1] == s.numel():
            x = x * s
        self.observer.update(x)


def linear_like(module: nn.Module) -> bool:
    """Linear layers and transformers' Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _is_norm(m: nn.Module) -> bool:
    return (isinstance(m, nn.LayerNorm | nn.GroupNorm) or (hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm))
            or type(m).__name__.endswith(("LayerNorm", "RMSNorm")))


def norm_fed(model: nn.Module, names: list[str], batch: Any) -> set[str]:
    """The layers in ``names`` whose input is the output of a normalisation layer (one forward pass)."""
    produced: dict[int, torch.Tensor] = {}  # the outputs are kept so that their ids stay unique
    fed: set[str] = set()
    hooks = [m.register_forward_hook(lambda _m, _a, out: produced.__setitem__(id(out), out))
             for m in model.modules() if _is_norm(m)]
    for n in names:
        hooks.append(model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: fed.add(n) if args and id(args[0]) in produced else None))
    try:
        with torch.no_grad():
            model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for h in hooks:
            h.remove()
    return fed


def smooth(model: nn.Module, names: list[str], calib: list[Any], alpha: float | str, bits: int = 8,
           fake_w=None, layers: str = "all") -> dict[str, torch.Tensor]:
    """SmoothQuant on the float layers in ``names`` (Linear-like only): scales weights in place and
    returns the per-channel input multiplier ``1/s`` for each smoothed layer.

    ``layers="norm"`` smooths, as the paper does, the layers that read a normalisation layer's output
    (attention's q/k/v, the first FFN layer) when the model has any, else every selected layer;
    ``"all"`` smooths every selected layer. Layers reading the same tensor share one scale (from the
    largest weight of each input channel among them), so they can share one quantised input.
    Until the layer is swapped for its quantised version, a forward pre-hook applies ``1/s`` to its
    input, so the float model computes the same function and later calibration sees smoothed inputs;
    the swap gives the quantised layer ``1/s`` as its input scale (``pending_in_scale``), so a calibrated
    method's later layers (GPTQ's Hessians) see the same function on the partly quantised model.
    """
    names = [n for n in names if linear_like(model.get_submodule(n))]
    targets = set(names)
    if layers == "norm" and names and calib:
        fed = norm_fed(model, names, calib[0])
        targets = fed or targets
    out: dict[str, torch.Tensor] = {}

    def apply(group: list) -> None:
        group = [(n, m, c) for n, m, c in group if c.amax is not None]
        if not group:
            return
        axes = [weight_in_axis(m) for _, m, _ in group]
        ws = [m.weight.detach().float() if a == 1 else m.weight.detach().float().T
              for (_, m, _), a in zip(group, axes)]
        w = torch.cat(ws)
        amax = torch.stack([c.amax for _, _, c in group]).amax(0)
        if alpha == "auto":
            _, s = search_alpha(w, group[0][2].sample(), amax, fake_w, bits)
        else:
            wmax = w.abs().amax(dim=0).clamp(min=1e-5)
            s = (amax.clamp(min=1e-5).pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)
        inv = 1.0 / s
        hooks: dict[torch.dtype, Any] = {}  # one per dtype, shared by the group (see _smoothing)
        for (name, module, _), in_axis in zip(group, axes):
            with torch.no_grad():
                shape = [1, 1]
                shape[in_axis] = -1
                module.weight.mul_(s.reshape(shape).to(module.weight.dtype))
            out[name] = inv
            dt = module.weight.dtype
            if dt not in hooks:
                hooks[dt] = _smoothing(inv.to(dt))
            module.register_forward_pre_hook(hooks[dt])
            module.pending_in_scale = inv  # the hook dies with the float layer: its quantised one takes this over

    blockwise(model, [n for n in names if n in targets], calib, lambda n, m: SampleCollector(2048), apply, group=True)
    return out


def _smoothing(x_inv: torch.Tensor):
    """A forward pre-hook multiplying the input by ``x_inv``. The layers of a group share one, which hands them
    one product of the same input: they still read one tensor, so calibration keeps them one group (q, k, v
    share one GPTQ Hessian and one pass instead of three). The input is held weakly and the product dropped
    with it: a layer left in float keeps its hook, which must not keep an activation alive with the model."""
    last: list = []  # [weak reference to the input, its version, the product]

    def drop(ref) -> None:
        if last and last[0] is ref:
            last.clear()

    def hook(_m, args):
        x = args[0]
        version = None if x.is_inference() else x._version  # inference tensors keep no version: never reused
        if version is None or not last or last[0]() is not x or last[1] != version:
            last[:] = [weakref.ref(x, drop), version, x * x_inv]
        return (last[2], *args[1:])

    return hook


class ChannelRange(Collector):
    """The largest magnitude each input channel of a layer takes (times its input scale, if set)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.amax = module, None

    def update(self, x: torch.Tensor) -> None:
        s = getattr(self.module, "in_scale", None)
        if s is not None and x.shape[-1] == s.numel():
            x = x * s
        a = x.abs().amax(0)
        self.amax = a if self.amax is None else torch.maximum(self.amax, a)


def split_outliers(model: nn.Module, names: list[str], k: int, calib: list[Any]) -> None:
    """Give every quantised Linear in ``names`` its ``k`` widest input channels (on ``calib``, after the input
    scale) as float outlier channels (:mod:`bitladder.nn.outliers`); layers reading one tensor share them."""
    names = [n for n in names if isinstance(model.get_submodule(n), QuantLinear)]

    def apply(group: list) -> None:
        group = [(n, m, c) for n, m, c in group if c.amax is not None]
        if not group:
            return
        amax = torch.stack([c.amax for _, _, c in group]).amax(0)
        if k >= amax.numel():
            raise BitladderError(f"layer {group[0][0]!r} has {amax.numel()} input channels: Act outliers must be "
                                 f"fewer, got {k}")
        idx = torch.topk(amax, k).indices.sort().values
        for _, m, _ in group:
            m.set_outliers(idx)

    blockwise(model, names, calib, lambda n, m: ChannelRange(m), apply, group=True)


def calibrate_activations(model: nn.Module, names: list[str], act: Act, calib: list[Any]) -> None:
    """Give every quantised layer in ``names`` a static input scale and zero point."""
    qtype = get_qtype(act.qtype)
    names = [n for n in names if isinstance(model.get_submodule(n), QuantModule)
             and not isinstance(model.get_submodule(n), nn.Embedding | QuantEmbedding)]

    def apply(name: str, module: QuantModule, c: ObserverCollector) -> None:
        scale, zp = c.observer.qparams(qtype, act.symmetric)
        module.set_act(qtype.name, scale, zp, act.observer)

    blockwise(model, names, calib, lambda n, m: ObserverCollector(m, act.observer), apply)


@transform("smoothquant")
class SmoothQuant(Transform):
    """SmoothQuant on the float layers (``config.act.smoothquant``); the quantised layers get the input
    scales afterwards."""

    order = 40

    @classmethod
    def wanted(cls, config) -> bool:
        act = getattr(config, "act", None)
        return act is not None and act.smoothquant is not None

    def before(self, p: Pass) -> None:
        act, config = p.config.act, p.config
        p.state["in_scales"] = smooth(p.model, list(p.targets), p.calib, act.smoothquant, act.bits,
                                      lambda w: rtn_tensor(w, config, 0).dequantize(), act.smoothed_layers)

    def after(self, p: Pass) -> None:
        for name, s in p.state.pop("in_scales").items():
            layer = p.model.get_submodule(name)
            if isinstance(layer, QuantModule) and "in_scale" not in layer.qmeta:  # else the swap gave it already
                layer.set_in_scale(s)


@transform("activations")
class Activations(Transform):
    """Activation quantisation (``config.act``): dynamic per-token / per-tensor integer kernels, or static
    scales calibrated on the quantised model, after every other step."""

    order = 60

    @classmethod
    def wanted(cls, config) -> bool:
        return getattr(config, "act", None) is not None

    def after(self, p: Pass) -> None:
        act = p.config.act
        dynamic = []
        if not act.dynamic:
            static = list(p.targets)
            if act.static_layers == "norm" and p.calib:
                fed = norm_fed(p.model, static, p.calib[0])
                static, dynamic = [n for n in static if n in fed], [n for n in static if n not in fed]
            if act.outliers:
                split_outliers(p.model, static, act.outliers, p.calib)
            calibrate_activations(p.model, static, act, p.calib)
        else:
            dynamic = list(p.targets)
        policy = "int8-w8a8" if act.dynamic == "tensor" else "int8-w8a8-token"
        for name in dynamic:
            m = p.model.get_submodule(name)
            if isinstance(m, QuantModule) and "kernel_policy" in type(m).__dict__:
                m.set_kernel_policy(policy)
