"""Swapping one float layer for its quantised counterpart (shared by the data-free and calibrated paths)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.configs import QuantConfig
from bitladder.methods.quantize.rtn import data_free_name, rtn_tensor
from bitladder.tensor.quantized import QuantizedTensor

log = logging.getLogger("bitladder")


def replace(model: nn.Module, name: str, new: nn.Module | None) -> None:
    """Put ``new`` at ``name`` in ``model`` (nothing when None)."""
    if new is not None:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def swap(module: nn.Module, config: QuantConfig, handler: type, name: str, qt: QuantizedTensor | None = None,
          method_name: str = "rtn") -> nn.Module | None:
    """The quantised counterpart of ``module`` from ``handler`` (round-to-nearest unless ``qt`` is given);
    None when the handler does not take this configuration."""
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
        if getattr(module, "pending_in_scale", None) is not None:  # SmoothQuant's, its hook gone with the float layer
            new.set_in_scale(module.pending_in_scale)
        new._qmeta["method"] = method_name
        if "kernel_policy" in type(new).__dict__:  # layers with low-bit kernels (Linear)
            new.set_kernel_policy(getattr(config, "kernel", "auto"))
    return new
