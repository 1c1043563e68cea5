"""The one entry point: ``bitladder.quantize(model, config, include=[...], exclude=[...])``."""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.clip import search_qparams
from bitladder.methods.quantize.configs import QuantConfig
from bitladder.methods.quantize.methods import RTN
from bitladder.nn import layers as _builtin_layers  # noqa: F401  (fills HANDLERS)
from bitladder.nn.base import QuantModule
from bitladder.nn.registry import HANDLERS, HandlerRegistry
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor

log = logging.getLogger("bitladder")

Selector = Sequence[str] | Callable[[str, nn.Module], bool] | None


@dataclass
class Plan:
    """What :func:`quantize` will do: handler per selected layer, reason per layer kept in float."""

    targets: dict[str, type]
    skipped: dict[str, str]


def _selected(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    def match(sel: Selector) -> bool:
        if callable(sel):
            return bool(sel(name, module))
        return any(fnmatch.fnmatchcase(name, p) for p in sel)

    if include is not None and not match(include):
        return False
    return not (exclude is not None and match(exclude))


def plan(model: nn.Module, include: Selector = None, exclude: Selector = None,
         handlers: HandlerRegistry = HANDLERS) -> Plan:
    """Which layers get which handler, and which weighted layers stay in float (and why)."""
    targets, skipped = {}, {}
    for name, module in model.named_modules():
        if not name or isinstance(module, QuantModule) or not _selected(name, module, include, exclude):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        handler = handlers.lookup(module)
        if handler is None:
            skipped[name] = f"no handler for {type(module).__name__}"
        else:
            targets[name] = handler
    return Plan(targets, skipped)


def check_finite(model: nn.Module, names: Sequence[str]) -> None:
    bad = [n for n in names if not torch.isfinite(model.get_submodule(n).weight).all()]
    if bad:
        raise BitladderError(f"NaN or Inf weights in layer(s): {', '.join(bad)}; fix or exclude them")


#: weights an integer GEMM with dynamic int8 activations takes: int7 (codes within +-64) keeps all 8 bits of
#: the activations on CPUs without VNNI too, where int8 weights need 7-bit activations (kernels/fbgemm_w8a8.py)
DYNAMIC_WEIGHTS = ("int8", "int7")


def quantize(model: nn.Module, config: QuantConfig, include: Selector = None, exclude: Selector = None,
             calib: Sequence[Any] | None = None, handlers: HandlerRegistry = HANDLERS,
             inplace: bool = False) -> nn.Module:
    """Replace every selected layer that has a handler by its quantised counterpart.

    ``include``/``exclude`` are glob patterns over module names (``"encoder.*.query"``) or a
    function ``(name, module) -> bool``. Layers with a weight but no handler stay in float and are
    logged; :func:`plan` lists them. ``calib`` is a list of input batches (tensors, or dicts of
    tensors passed as keywords) for methods that need data. A model that is itself one layer is
    returned quantised.
    """
    if not hasattr(config, "qtype") or not hasattr(config, "layout"):
        raise BitladderError(f"config must be one of Float, Int, Ternary, Binary, Codebook; got "
                             f"{type(config).__name__}")
    method = getattr(config, "method", None) or RTN()
    act = getattr(config, "act", None)
    for m in (method, act):
        if m is not None and m.needs_data and not (m is act and act.dynamic and act.smoothquant is None):
            check_calibration(calib, m)
    if act is not None and act.dynamic and (config.qtype not in DYNAMIC_WEIGHTS or config.layout(0).granularity == "group"
                                            or not getattr(config, "symmetric", True)):
        raise BitladderError("dynamic W8A8 needs int8 symmetric weights per channel or per tensor (or int7: "
                             "8-bit activations on CPUs without VNNI too)")
    if getattr(config, "bias_correction", False) and not calib:
        raise BitladderError("bias_correction needs calibration data: pass calib=[batch, ...]")
    model = model if inplace else copy.deepcopy(model)
    if handlers.lookup(model) is not None and not list(model.children()):
        holder = quantize(nn.Sequential(model), config, calib=calib, handlers=handlers, inplace=True)
        return holder[0]
    p = plan(model, include, exclude, handlers)
    check_finite(model, list(p.targets))
    for name, reason in p.skipped.items():
        log.info("kept in float: %s (%s)", name, reason)
    targets = dict(p.targets)
    if getattr(config, "equalize", False):
        from bitladder.methods.quantize.cle import equalize

        log.info("cross-layer equalisation: %d layer pairs", equalize(model))
    float_model = copy.deepcopy(model) if getattr(config, "bias_correction", False) else None
    in_scales = {}
    if act is not None and act.smoothquant is not None:
        from bitladder.methods.quantize.activation import smooth

        in_scales = smooth(model, list(targets), calib, act.smoothquant, act.bits,
                           lambda w: rtn_tensor(w, config, 0).dequantize(), act.smoothed_layers)
    rest = _quantize_with_data(model, targets, config, method, calib) if method.needs_data else targets
    for name, handler in rest.items():
        _replace(model, name, _swap(model.get_submodule(name), config, handler, name))
    for name, s in in_scales.items():
        if isinstance(model.get_submodule(name), QuantModule):
            model.get_submodule(name).set_in_scale(s)
    if float_model is not None:
        from bitladder.methods.quantize.bias_correction import correct_biases

        correct_biases(float_model, model, list(targets), calib)
    if act is not None and act.dynamic:
        for name in targets:
            m = model.get_submodule(name)
            if isinstance(m, QuantModule) and "kernel_policy" in type(m).__dict__:
                m.set_kernel_policy("int8-w8a8" + ("-token" if act.dynamic == "token" else ""))
    elif act is not None:
        from bitladder.methods.quantize.activation import calibrate_activations

        calibrate_activations(model, list(targets), act, calib)
    return model


def _replace(model: nn.Module, name: str, new: nn.Module | None) -> None:
    if new is not None:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _count(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 0
    if isinstance(batch, dict) and batch:
        first = next(iter(batch.values()))
        return first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else 0
    raise BitladderError(f"calibration batches must be tensors or dicts of tensors, got {type(batch).__name__}")


def check_calibration(calib: Sequence[Any] | None, method) -> None:
    name = type(method).__name__
    if calib is None or len(calib) == 0:
        raise BitladderError(f"{name} needs calibration data: pass calib=[batch, ...] with at least "
                             f"{method.min_samples} samples")
    n = sum(_count(b) for b in calib)
    if n < method.min_samples:
        raise BitladderError(f"{name} needs at least {method.min_samples} calibration samples, got {n}")


def _data_ready(module: nn.Module) -> bool:
    """Layers whose inputs map onto weight columns (grouped convolutions and embeddings do not)."""
    if isinstance(module, nn.Embedding):
        return False
    return getattr(module, "groups", 1) == 1


def _quantize_with_data(model: nn.Module, targets: dict[str, type], config, method, calib) -> dict[str, type]:
    """Run the calibrated method on every layer it applies to; returns the layers left for RTN."""
    from bitladder.methods.quantize.dispatch import calibrated_swap

    data_layers = [n for n in targets if _data_ready(model.get_submodule(n))]
    idle = calibrated_swap(model, data_layers, targets, config, method, calib)
    rest = {n: h for n, h in targets.items() if n not in data_layers or n in idle}
    for n in rest:
        log.info("%s: %s does not apply (no usable inputs); round-to-nearest instead", n, type(method).__name__)
    return rest


def _swap(module: nn.Module, config: QuantConfig, handler: type, name: str, qt: QuantizedTensor | None = None,
          method_name: str = "rtn") -> nn.Module | None:
    if not torch.isfinite(module.weight).all():
        raise BitladderError(f"NaN or Inf weights in layer(s): {name}; fix or exclude them")
    if qt is None:
        w = module.weight.detach()
        w = w.double() if get_qtype(config.qtype).bits > 32 else w.float()
        qt = rtn_tensor(w, config, handler.weight_axis)
        method_name = data_free_name(config)
    new = handler.from_float(module, qt)
    if new is None:
        log.info("kept in float: %s (its configuration is not handled by %s)", name, handler.__name__)
    else:
        new._qmeta["method"] = method_name
        if "kernel_policy" in type(new).__dict__:  # layers with low-bit kernels (Linear)
            new.set_kernel_policy(getattr(config, "kernel", "auto"))
    return new


def data_free_name(config: QuantConfig) -> str:
    if type(config).__name__ == "Codebook":
        return "kmeans"
    return "hqq" if type(getattr(config, "method", None)).__name__ == "HQQ" else "rtn"


def rtn_tensor(w: torch.Tensor, config: QuantConfig, axis: int) -> QuantizedTensor:
    """The data-free weight of a layer: round to nearest (with clip search if asked), or HQQ."""
    layout = config.layout(axis)
    method = getattr(config, "method", None)
    if type(config).__name__ == "Codebook":
        from bitladder.methods.quantize.codebook import codebook_tensor

        return codebook_tensor(w, config.bits, layout, config.iters)
    if type(method).__name__ == "HQQ":
        from bitladder.methods.quantize.hqq import hqq_blocks

        qtype = get_qtype(config.qtype)
        q, s, z = hqq_blocks(layout.to_blocks(w), qtype, method.iters, method.lp, method.beta, method.kappa)
        return QuantizedTensor.from_codes(q, s, z, qtype, tuple(w.shape), layout, config.scale_dtype)
    if getattr(method, "clip_search", False) and get_qtype(config.qtype).kind == "int":
        xb = layout.to_blocks(w)
        qp = search_qparams(xb, get_qtype(config.qtype), config.symmetric, SCALE_DTYPES[config.scale_dtype])
        return QuantizedTensor.from_float(w, config.qtype, layout, config.symmetric, config.scale_dtype, qparams=qp)
    return QuantizedTensor.from_float(w, config.qtype, layout, config.symmetric, config.scale_dtype)
