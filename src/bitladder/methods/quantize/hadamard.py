"""Hadamard rotation before quantisation (``Int(..., rotate=B)``), QuaRot-style and training-free: every
selected Linear becomes ``Rotated(linear)`` (:mod:`bitladder.nn.rotated`), its weight rotated offline to
``W H`` and its input rotated online by the same block-Hadamard ``H`` (blocks of the largest power of two
<= B dividing the input width). The float function is unchanged; weight rows and activations lose their
outlier channels, so GPTQ, RTN and per-token W8A8 then quantise an easier problem.

The residual stream of a post-LayerNorm encoder (BERT, MiniLM) cannot be rotated offline: LayerNorm's
per-channel gain acts on the residual itself, so each layer's input is rotated at run time instead. A
layer whose input width has no power-of-two factor >= 8 is left unrotated (and logged).
"""

from __future__ import annotations

import logging

from torch import nn

from bitladder.methods.quantize.transforms import Pass, Transform, transform
from bitladder.nn.rotated import Rotated, block_for

log = logging.getLogger("bitladder")
MIN_BLOCK = 8  # smaller blocks barely mix channels


@transform("hadamard")
class Hadamard(Transform):
    """Wrap each selected Linear in :class:`~bitladder.nn.rotated.Rotated`; its target becomes the inner
    layer (``name.layer``), so calibrated methods see the rotated inputs."""

    order = 20

    @classmethod
    def wanted(cls, config) -> bool:
        return getattr(config, "rotate", None) is not None

    def before(self, p: Pass) -> None:
        out = {}
        for name, handler in p.targets.items():
            m = p.model.get_submodule(name)
            block = block_for(m.in_features, p.config.rotate) if isinstance(m, nn.Linear) else 0
            if block < MIN_BLOCK:
                log.info("hadamard: %s not rotated (%s)", name, "not a Linear" if not block else
                         f"input width {m.in_features} has no power-of-two block >= {MIN_BLOCK}")
                out[name] = handler
                continue
            parent, _, child = name.rpartition(".")
            setattr(p.model.get_submodule(parent) if parent else p.model, child, Rotated.around(m, block))
            out[f"{name}.layer" if name else "layer"] = handler
        p.targets = out
