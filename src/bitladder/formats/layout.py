"""Where scales apply: per tensor, per channel (any axis) or per group along the reduced dimension.

A layout turns a tensor into a 3-D *block view* ``(C, nblocks, B)``: ``C`` channels (the chosen
axis moved first), each row of ``K`` elements cut into ``nblocks`` groups of ``B`` (the last group
zero-padded). One scale (and zero point) per ``(C, nblock)`` pair.

>>> import torch
>>> lay = Layout("group", axis=0, group=4)
>>> w = torch.arange(12.).reshape(2, 6)
>>> lay.to_blocks(w).shape
torch.Size([2, 2, 4])
>>> torch.equal(lay.from_blocks(lay.to_blocks(w), w.shape), w)
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Layout:
    """Where scales apply: ``granularity`` (tensor, channel or group), the channel ``axis`` and the ``group`` size."""
    granularity: str = "channel"
    axis: int = 0
    group: int | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group" and (self.group is None or self.group < 1):
            raise ValueError(f"group granularity needs a positive group size, got {self.group!r}")

    def dims(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(C, K, nblocks, B) for a tensor of this shape."""
        n = math.prod(shape)
        if self.granularity == "tensor" or len(shape) == 0:
            return 1, n, 1, n
        axis = self.axis % len(shape)
        c = shape[axis]
        k = n // c if c else 0
        if self.granularity == "channel":
            return c, k, 1, k
        b = min(self.group, k) if k else 1
        return c, k, math.ceil(k / b) if k else 0, b

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The (C, K) matrix: the channel axis first, everything else flattened."""
        c, k, _, _ = self.dims(tuple(x.shape))
        if self.granularity == "tensor" or x.dim() == 0:
            return x.reshape(1, -1)
        return x.movedim(self.axis % x.dim(), 0).reshape(c, k)

    def unrows(self, r: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`rows`: the (C, K) matrix ``r`` back to a tensor of ``shape``."""
        if self.granularity == "tensor" or len(shape) == 0:
            return r.reshape(shape)
        axis = self.axis % len(shape)
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        return r.reshape(moved).movedim(0, axis)

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The (C, nblocks, B) block view of ``x``, the last group zero-padded."""
        c, k, nb, b = self.dims(tuple(x.shape))
        r = self.rows(x)
        pad = nb * b - k
        if pad:
            r = torch.nn.functional.pad(r, (0, pad))
        return r.reshape(c, nb, b)

    def from_blocks(self, xb: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_blocks`: the padding dropped, the tensor of ``shape`` restored."""
        c, k, _, _ = self.dims(tuple(shape))
        return self.unrows(xb.reshape(c, -1)[:, :k], tuple(shape))

    def to_dict(self) -> dict:
        """The fields as a plain dict (``Layout(**d)`` rebuilds it)."""
        return asdict(self)
