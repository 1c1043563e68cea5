"""Layer handlers, registered per float module type.

A handler is a :class:`~bitladder.nn.base.QuantModule` subclass; it declares the float types it
replaces and writes at most two methods (``from_float`` and ``forward``). User layers register the
same way as built-in ones, into the default registry or a registry of their own::

    registry = HandlerRegistry()
    registry.register(MyLayer)(MyQuantLayer)

Types are matched by class, or by ``"module.QualName"`` string so that optional libraries (e.g.
transformers' ``Conv1D``) need not be imported to be handled.
"""

from __future__ import annotations

from torch import nn


class HandlerRegistry:
    """Maps float module types (or their dotted names) to the quantised handler classes that replace them."""
    def __init__(self) -> None:
        self._by_type: dict[type | str, type] = {}

    def register(self, *float_types: type | str):
        """Class decorator: register the handler for ``float_types`` (types or "module.QualName" strings)."""
        def deco(handler: type) -> type:
            for t in float_types:
                self._by_type[t] = handler
            return handler

        return deco

    def lookup(self, module: nn.Module) -> type | None:
        """The handler for ``module``'s type or its nearest registered base class, or None."""
        for cls in type(module).__mro__:
            if cls in self._by_type:
                return self._by_type[cls]
            key = f"{cls.__module__}.{cls.__qualname__}"
            if key in self._by_type:
                return self._by_type[key]
        return None

    def copy(self) -> "HandlerRegistry":
        """An independent copy of the registry."""
        new = HandlerRegistry()
        new._by_type = dict(self._by_type)
        return new

    def __contains__(self, t: type | str) -> bool:
        return t in self._by_type


#: The built-in handlers; :mod:`bitladder.nn.layers` fills it on import.
HANDLERS = HandlerRegistry()
