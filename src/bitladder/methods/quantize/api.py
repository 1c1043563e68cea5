"""The one entry point: ``bitladder.quantize(model, config, include=[...], exclude=[...])``."""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.configs import QuantConfig
from bitladder.nn import layers as _builtin_layers  # noqa: F401  (fills HANDLERS)
from bitladder.nn.base import QuantModule
from bitladder.nn.registry import HANDLERS, HandlerRegistry
from bitladder.tensor.quantized import QuantizedTensor

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


def quantize(model: nn.Module, config: QuantConfig, include: Selector = None, exclude: Selector = None,
             handlers: HandlerRegistry = HANDLERS, inplace: bool = False) -> nn.Module:
    """Replace every selected layer that has a handler by its quantised counterpart.

    ``include``/``exclude`` are glob patterns over module names (``"encoder.*.query"``) or a
    function ``(name, module) -> bool``. Layers with a weight but no handler stay in float and are
    logged; :func:`plan` lists them. A model that is itself one layer is returned quantised.
    """
    if not hasattr(config, "qtype") or not hasattr(config, "layout"):
        raise BitladderError(f"config must be one of Float, Int, Ternary, Binary; got {type(config).__name__}")
    model = model if inplace else copy.deepcopy(model)
    if handlers.lookup(model) is not None and not list(model.children()):
        return _swap(model, config, handlers.lookup(model), "<model>") or model
    p = plan(model, include, exclude, handlers)
    check_finite(model, list(p.targets))
    for name, reason in p.skipped.items():
        log.info("kept in float: %s (%s)", name, reason)
    for name, handler in p.targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = _swap(getattr(parent, child), config, handler, name)
        if new is not None:
            setattr(parent, child, new)
    return model


def _swap(module: nn.Module, config: QuantConfig, handler: type, name: str) -> nn.Module | None:
    if not torch.isfinite(module.weight).all():
        raise BitladderError(f"NaN or Inf weights in layer(s): {name}; fix or exclude them")
    w = module.weight.detach()
    w = w.double() if get_qtype(config.qtype).bits > 32 else w.float()
    qt = QuantizedTensor.from_float(w, config.qtype, config.layout(handler.weight_axis), config.symmetric,
                                    config.scale_dtype)
    new = handler.from_float(module, qt)
    if new is None:
        log.info("kept in float: %s (its configuration is not handled by %s)", name, handler.__name__)
    return new
