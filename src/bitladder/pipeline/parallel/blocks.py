"""How a model is cut into a sequence of units for pipeline stages: one :class:`Splitter` per architecture,
registered by module type (a new architecture is one registration, never a name comparison).

A unit is the smallest piece a stage can own (the embedding, one decoder block, the final norm with the
head); it is named by the module-name prefixes of its parameters. A stage owns a contiguous run of units
and runs them in order: the first takes the model's input, each later one the previous stage's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from bitladder.errors import BitladderError


class Splitter(ABC):
    """Names the units of one architecture and builds the module that runs a contiguous run of them."""

    @abstractmethod
    def units(self, model: nn.Module) -> list[list[str]]:
        """Module names (relative to ``model``) of each unit, in the order the forward pass meets them."""

    @abstractmethod
    def stage(self, model: nn.Module, start: int, stop: int) -> nn.Module:
        """A module running units ``start:stop`` of ``model``: the input of unit ``start`` in, the output of
        unit ``stop - 1`` out (one tensor each way). It holds only those units' modules."""


class SplitterRegistry:
    """Splitters by module type; a lookup walks the type's MRO, so a subclass is split like its base."""

    def __init__(self) -> None:
        self._by_type: dict[type, Splitter] = {}

    def register(self, cls: type, splitter: Splitter) -> None:
        """Split models of type ``cls`` (and its subclasses) with ``splitter``."""
        self._by_type[cls] = splitter

    def names(self) -> list[str]:
        """The registered types, for error messages."""
        return sorted(t.__name__ for t in self._by_type)

    def find(self, model: nn.Module) -> tuple[str, nn.Module, Splitter]:
        """(prefix, inner module, splitter): ``model`` itself when registered, else the first registered module
        reached through wrappers that hold a single child and no parameters of their own (``CausalLM``)."""
        prefix, m = "", model
        while True:
            for cls in type(m).__mro__:
                if cls in self._by_type:
                    return prefix, m, self._by_type[cls]
            children = list(m.named_children())
            if len(children) != 1 or list(m.parameters(recurse=False)):
                raise BitladderError(f"a {type(model).__name__} model cannot be split into pipeline stages: "
                                     f"bitladder splits {', '.join(self.names())} (register a Splitter for others)")
            name, m = children[0]
            prefix += name + "."

