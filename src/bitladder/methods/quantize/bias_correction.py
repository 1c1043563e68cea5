"""Empirical bias correction (Nagel et al., 2019): quantisation shifts a layer's mean output by
``(W - W_q) E[x]``; adding that back to the bias removes the shift, measured on calibration data."""

from __future__ import annotations

from typing import Any

import copy

from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.quantize.calibrate import SampleCollector, blockwise
from bitladder.methods.quantize.transforms import Pass, Transform, transform
from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding


def correct_biases(float_model: nn.Module, qmodel: nn.Module, names: list[str], calib: list[Any]) -> None:
    """For every quantised layer in ``names``: bias += (W_float - W_effective) @ E[input rows]."""
    names = [n for n in names if isinstance(qmodel.get_submodule(n), QuantModule)
             and not isinstance(qmodel.get_submodule(n), QuantEmbedding)
             and getattr(qmodel.get_submodule(n), "groups", 1) == 1]

    def apply(name: str, module: QuantModule, c: SampleCollector) -> None:
        w = float_model.get_submodule(name).weight.detach().double()
        delta = w - module.effective_weight()
        if module.in_axis == 0:  # transformers' Conv1D stores (in, out)
            delta = delta.T
        shift = delta.reshape(delta.shape[0], -1) @ c.mean.double()
        bias = getattr(module, "bias", None)
        new = shift.float() if bias is None else bias.detach() + shift.float()
        module.bias = nn.Parameter(new, requires_grad=False)
        module._qmeta["bias_corrected"] = True

    blockwise(qmodel, names, calib, lambda n, m: SampleCollector(keep=1), apply)


@transform("bias_correction")
class BiasCorrection(Transform):
    """Keeps a float copy before quantisation (after rotations, before SmoothQuant's hooks), corrects the
    biases last but activation set-up (``config.bias_correction``)."""

    order, after_order = 30, 50

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(getattr(config, "bias_correction", False))

    def check(self, config, calib) -> None:
        if not calib:
            raise BitladderError("bias_correction needs calibration data: pass calib=[batch, ...]")

    def before(self, p: Pass) -> None:
        p.state["float_model"] = copy.deepcopy(p.model)

    def after(self, p: Pass) -> None:
        correct_biases(p.state.pop("float_model"), p.model, list(p.targets), p.calib)
