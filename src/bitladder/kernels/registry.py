"""The kernels, by name: each kernel module registers its classes here when it is imported.

Populated once at import (like a table of formats), never changed after; selection
(:mod:`bitladder.kernels.select`) and layers look kernels up here, so a new kernel is one file that
registers itself plus its import in ``bitladder/kernels/__init__.py``.
"""

from __future__ import annotations

from bitladder.errors import BitladderError

KERNELS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` selectable under ``cls.name``."""
    if cls.name in KERNELS and KERNELS[cls.name] is not cls:
        raise ValueError(f"kernel name {cls.name!r} is registered twice")
    KERNELS[cls.name] = cls
    return cls


def get(name: str) -> type:
    """The kernel class registered as ``name``; BitladderError listing the registered ones if unknown."""
    try:
        return KERNELS[name]
    except KeyError:
        raise BitladderError(f"unknown kernel {name!r}; registered: {', '.join(sorted(KERNELS))}") from None


def for_op(op: str) -> list[type]:
    """The registered kernels of one operation ("linear", "conv2d"), in selection order."""
    return sorted((k for k in KERNELS.values() if k.op == op), key=lambda k: (k.rank, k.name))
