"""An orthogonal rotation of a layer's input: ``layer(x @ H)`` where the layer's weight was rotated by the
same ``H`` (``W H``), so the float function is unchanged (``H H^T = I``) while each weight row and each
input vector is spread evenly over its channels: outliers shrink, and low-bit grids fit (QuaRot, Ashkboos
et al. 2024; QuIP#, Tseng et al. 2024).

``H`` is block-diagonal: normalised Sylvester-Hadamard blocks of ``block`` channels (a power of two that
divides the input width). At run time it is a fast Walsh-Hadamard transform in C (``log2(block)`` additions
per element, :mod:`bitladder.kernels.hadamard`); where the layer's kernel can quantise the rotated input in the
same pass (static W8A8) it does, and under autograd, tracing or export it is one batched matmul. It is
rebuilt from ``block`` when an artifact loads (no stored matrix).

>>> import torch
>>> lin, x = torch.nn.Linear(64, 8), torch.randn(3, 64)
>>> want = lin(x)
>>> r = Rotated.around(lin, 32)  # rotates lin's weight in place
>>> torch.allclose(r(x), want, atol=1e-5)
True
"""

from __future__ import annotations

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.kernels import hadamard as fast
from bitladder.nn.base import eager
from bitladder.nn.records import build_layer, layer_args
from bitladder.nn.structures import structure


def hadamard(n: int) -> torch.Tensor:
    """The normalised Sylvester-Hadamard matrix of order ``n`` (a power of two): orthogonal and symmetric."""
    if n < 1 or n & (n - 1):
        raise BitladderError(f"a Hadamard block must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def block_for(width: int, largest: int) -> int:
    """The largest power of two that divides ``width`` and is at most ``largest``."""
    b = 1
    while b * 2 <= largest and width % (b * 2) == 0:
        b *= 2
    return b


def rotate_input(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x @ blockdiag(h, h, ...)`` over the last dimension."""
    b = h.shape[0]
    return (x.reshape(*x.shape[:-1], x.shape[-1] // b, b) @ h).reshape(x.shape)


@structure
class Rotated(nn.Module):
    """``layer(x @ H)`` with ``H`` block-diagonal Hadamard of ``block`` channels; ``layer`` (a Linear, float
    or quantised) holds ``W H``. Layers reading the same tensor share one rotated copy of it."""

    def __init__(self, layer: nn.Module, block: int, inner: dict | None = None) -> None:
        super().__init__()
        self.layer, self.block = layer, block
        self.inner = inner if inner is not None else dict(zip(("type", "args"), layer_args(layer), strict=True))
        self.register_buffer("h", hadamard(block).float(), persistent=False)

    @classmethod
    @torch.no_grad()
    def around(cls, linear: nn.Linear, block: int) -> Rotated:
        """Rotate ``linear``'s weight in place (``W H``) and wrap it: the same function, rotated inputs."""
        if not isinstance(linear, nn.Linear) or linear.in_features % block:
            raise BitladderError(f"a Hadamard rotation of {block} channels needs a Linear whose input width "
                                 f"it divides; got {type(linear).__name__} {tuple(linear.weight.shape)}")
        w = linear.weight.detach().double()
        linear.weight.copy_(rotate_input(w, hadamard(block)).to(linear.weight.dtype))
        return cls(linear, block)

    def rotate_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``w H``: a float weight of the wrapped layer's shape in the rotated basis (what it approximates)."""
        return rotate_input(w.double(), hadamard(self.block)).to(w.dtype)

    def inner_reference(self, float_self: nn.Module) -> tuple[nn.Module, torch.Tensor]:
        """Structural hook for per-layer measurement: the float layer this wrapper stands for (``float_self``,
        the plain Linear it replaced) and the weight the inner layer approximates, ``W H``."""
        return float_self, self.rotate_weight(float_self.weight.detach())

    @eager  # the C transform and the rotated input kept on the tensor, as in eager mode
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.layer, "forward_rotated", None) if fast.fast_path(x) else None
        y = fused(x, self.block) if fused is not None else None
        if y is not None:
            return y
        cached = getattr(x, "_bitladder_rotated", None)
        if cached is None or cached[0] != self.block:
            xr = fast.fwht(x, self.block) if fast.fast_path(x) else rotate_input(x, self.h.to(x.dtype))
            cached = (self.block, xr)
            try:
                x._bitladder_rotated = cached  # q, k and v read the same tensor: rotate it once
            except (AttributeError, RuntimeError):
                pass
        return self.layer(cached[1])

    def record(self) -> dict:
        """Block size and the float layer's constructor record (what an artifact stores)."""
        return {"block": self.block, "inner": self.inner}

    @classmethod
    def from_record(cls, args: dict) -> Rotated:
        """A fresh rotation around a fresh float layer, from :meth:`record`'s data."""
        return cls(build_layer(args["inner"]["type"], args["inner"]["args"]), args["block"], args["inner"])

    def extra_repr(self) -> str:
        return f"hadamard_block={self.block}"
