"""Pruning configs: unstructured magnitude (per layer or global) and N:M semi-structured."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from bitladder.errors import BitladderError


@dataclass(frozen=True)
class Magnitude:
    """Zero the smallest-|w| fraction ``sparsity`` of weights, per layer or over all selected layers.

    >>> import torch, bitladder
    >>> m = bitladder.prune(torch.nn.Linear(100, 10), Magnitude(sparsity=0.8))
    >>> round(float((m.weight == 0).float().mean()), 3)
    0.8
    """

    sparsity: float = 0.5
    scope: str = "layer"
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, int | float) or not 0 <= self.sparsity < 1:
            raise BitladderError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.scope not in ("layer", "global"):
            raise BitladderError(f"scope must be 'layer' or 'global', got {self.scope!r}")

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "Magnitude", "version": self.version, **asdict(self)}


@dataclass(frozen=True)
class NM:
    """Keep the ``n`` largest-|w| of every ``m`` consecutive input weights (2:4 by default).

    >>> import torch, bitladder
    >>> w = bitladder.prune(torch.nn.Linear(8, 2), NM(2, 4)).weight
    >>> (w.reshape(2, 2, 4) != 0).sum(-1).tolist()
    [[2, 2], [2, 2]]
    """

    n: int = 2
    m: int = 4
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise BitladderError(f"N:M needs integers 0 < n < m, got {self.n}:{self.m}")

    @property
    def sparsity(self) -> float:
        """The fraction of weights N:M removes, 1 - N/M."""
        return 1 - self.n / self.m

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "NM", "version": self.version, **asdict(self)}
