"""Modules that change a model's structure (factorised layers, shortcuts, rotations), registered with the
constructor record an artifact stores for them, so that loading rebuilds them without pickled code.

A structural module registers itself with :func:`structure`: it has ``record(self) -> dict`` (its
constructor arguments, as JSON data) and ``from_record(args) -> module`` (fresh weights; the artifact's
tensors are loaded afterwards). :mod:`bitladder.io.structure` records and rebuilds through this table only.
"""

from __future__ import annotations

import importlib

from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.records import LAYERS, build_layer, layer_args

#: type name -> class, filled by :func:`structure`
STRUCTURES: dict[str, type] = {}


def structure(cls: type) -> type:
    """Class decorator: register a structural module under its class name."""
    if not (hasattr(cls, "record") and hasattr(cls, "from_record")):
        raise TypeError(f"{cls.__name__} needs record() and from_record() to be a structure")
    STRUCTURES[cls.__name__] = cls
    return cls


#: modules whose structures register themselves on import (named, so the registry imports none of them)
BUILTIN = ("bitladder.nn.factorized", "bitladder.nn.rotated", "bitladder.nn.shortcut")


def _load_builtins() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def is_structure(m: nn.Module) -> bool:
    """Whether ``m`` is a registered structural module (its record rebuilds it)."""
    _load_builtins()
    return any(type(m) is cls for cls in STRUCTURES.values())


def module_record(m: nn.Module) -> tuple[str, dict]:
    """(type name, constructor arguments) of a registered structure or a plain torch layer."""
    _load_builtins()
    kind = next((k for k, cls in STRUCTURES.items() if type(m) is cls), None)
    if kind is not None:
        return kind, m.record()
    plain = layer_args(m)
    if plain is None:
        raise BitladderError(f"cannot record the changed structure of {type(m).__name__}; supported: "
                             f"{', '.join([*LAYERS, *STRUCTURES])}")
    return plain


def build_module(kind: str, args: dict) -> nn.Module:
    """The module a :func:`module_record` describes, with fresh weights."""
    _load_builtins()
    if kind in LAYERS:
        return build_layer(kind, args)
    if kind not in STRUCTURES:
        raise BitladderError(f"artifact structure names an unknown module type {kind!r}; known: "
                             f"{', '.join([*LAYERS, *STRUCTURES])}")
    return STRUCTURES[kind].from_record(args)
