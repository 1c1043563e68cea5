"""Model transforms around the per-layer work of :func:`bitladder.quantize`: cross-layer equalisation,
rotations, SmoothQuant, bias correction and activation set-up each register one class here, and
``quantize()`` runs every transform its config asks for: all ``before`` steps (on the float model, in
``order``), the per-layer quantisation, then all ``after`` steps (in ``after_order``).

A new transform is one file: subclass :class:`Transform`, decorate it with :func:`transform`, and list the
module in :data:`BUILTIN` (or import it before calling ``quantize``).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

#: modules whose transforms register themselves on import
BUILTIN = ("bitladder.methods.quantize.cle", "bitladder.methods.quantize.hadamard",
           "bitladder.methods.quantize.activation", "bitladder.methods.quantize.bias_correction",
           "bitladder.methods.quantize.blocktune")

#: name -> transform class, filled by :func:`transform`
TRANSFORMS: dict[str, type[Transform]] = {}


@dataclass
class Pass:
    """One ``quantize()`` call as the transforms see it: ``targets`` maps the names of the layers to be
    quantised to their handlers (a transform may rename them); ``state`` carries what a ``before`` step
    leaves for its ``after`` step."""

    model: nn.Module
    targets: dict[str, type]
    config: Any
    calib: Sequence[Any] | None
    state: dict = field(default_factory=dict)


class Transform(abc.ABC):
    """A step around the per-layer work. ``order`` sorts the ``before`` steps, ``after_order`` the
    ``after`` steps (default: ``order``)."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 50
    after_order: ClassVar[int | None] = None

    @classmethod
    @abc.abstractmethod
    def wanted(cls, config) -> bool:
        """Whether ``config`` asks for this transform."""

    def check(self, config, calib: Sequence[Any] | None) -> None:
        """Raise :class:`~bitladder.errors.BitladderError` before any work when the inputs cannot serve."""

    def before(self, p: Pass) -> None:
        """Change the float model (and ``p.targets``) before the layers are quantised."""

    def after(self, p: Pass) -> None:
        """Finish on the quantised model."""


def transform(name: str):
    """Class decorator: register a :class:`Transform` under ``name``."""

    def register(cls: type[Transform]) -> type[Transform]:
        if not issubclass(cls, Transform):
            raise TypeError(f"{cls.__name__} must subclass Transform")
        cls.name = name
        TRANSFORMS[name] = cls
        return cls

    return register


def registered() -> dict[str, type[Transform]]:
    """Every registered transform, the built-in ones loaded."""
    for module in BUILTIN:
        importlib.import_module(module)
    return dict(TRANSFORMS)


def active(config) -> list[Transform]:
    """Instances of the transforms ``config`` asks for, in ``before`` order."""
    return sorted((cls() for cls in registered().values() if cls.wanted(config)), key=lambda t: t.order)


def run_before(steps: list[Transform], p: Pass) -> None:
    """Every ``before`` step in order."""
    for s in steps:
        s.before(p)


def run_after(steps: list[Transform], p: Pass) -> None:
    """Every ``after`` step in ``after_order``."""
    for s in sorted(steps, key=lambda t: t.order if t.after_order is None else t.after_order):
        s.after(p)
