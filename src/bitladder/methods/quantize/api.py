"""The one entry point: ``bitladder.quantize(model, config, include=[...], exclude=[...])``."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.quantize.configs import CONFIG_TYPES, QuantConfig
from bitladder.methods.quantize.methods import RTN
from bitladder.methods.quantize.swap import replace, swap
from bitladder.methods.quantize.transforms import Pass, active, run_after, run_before
from bitladder.nn import layers as _builtin_layers  # noqa: F401  (fills HANDLERS)
from bitladder.nn.base import QuantModule
from bitladder.nn.registry import HANDLERS, HandlerRegistry
from bitladder.nn.select import Selector, selected

log = logging.getLogger("bitladder")

@dataclass
class Plan:
    """What :func:`quantize` will do: handler per selected layer, reason per layer kept in float."""

    targets: dict[str, type]
    skipped: dict[str, str]


def plan(model: nn.Module, include: Selector = None, exclude: Selector = None,
         handlers: HandlerRegistry = HANDLERS) -> Plan:
    """Which layers get which handler, and which weighted layers stay in float (and why)."""
    targets, skipped = {}, {}
    for name, module in model.named_modules():
        if not name or isinstance(module, QuantModule) or not selected(name, module, include, exclude):
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
    """Raise BitladderError naming the layers of ``names`` whose weights hold NaN or Inf."""
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
    if not isinstance(config, tuple(CONFIG_TYPES.values())):
        raise BitladderError(f"config must be one of {', '.join(CONFIG_TYPES)}; got {type(config).__name__}")
    method = getattr(config, "method", None) or RTN()
    act = getattr(config, "act", None)
    for m in (method, act):
        if m is not None and m.needs_data:
            check_calibration(calib, m)
    if act is not None and (act.dynamic or act.static_layers == "norm") and (config.qtype not in DYNAMIC_WEIGHTS or config.layout(0).granularity == "group"
                                            or not getattr(config, "symmetric", True)):
        raise BitladderError("dynamic W8A8 needs int8 symmetric weights per channel or per tensor (or int7: "
                             "8-bit activations on CPUs without VNNI too)")
    steps = active(config)
    for step in steps:
        step.check(config, calib)
    model = model if inplace else copy.deepcopy(model)
    if handlers.lookup(model) is not None and not list(model.children()):
        holder = quantize(nn.Sequential(model), config, calib=calib, handlers=handlers, inplace=True)
        return holder[0]
    p = plan(model, include, exclude, handlers)
    check_finite(model, list(p.targets))
    for name, reason in p.skipped.items():
        log.info("kept in float: %s (%s)", name, reason)
    work = Pass(model, dict(p.targets), config, calib)
    run_before(steps, work)
    targets = work.targets
    rest = _quantize_with_data(model, targets, config, method, calib) if method.needs_data else targets
    for name, handler in rest.items():
        replace(model, name, swap(model.get_submodule(name), config, handler, name))
    run_after(steps, work)
    return model


def _count(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 0
    if isinstance(batch, dict) and batch:
        first = next(iter(batch.values()))
        return first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else 0
    raise BitladderError(f"calibration batches must be tensors or dicts of tensors, got {type(batch).__name__}")


def check_calibration(calib: Sequence[Any] | None, method) -> None:
    """Raise BitladderError unless ``calib`` holds at least ``method.min_samples`` samples."""
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
