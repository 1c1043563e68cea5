"""Weight-only Conv2d: the weight dequantised in one pass per call from its packed bit planes, then torch's
float convolution on exactly the weight the layer's own path computes.

A weight-only convolution computes in float, so the most it can save is the dequantisation: the layer's own
path runs a dozen torch operations per call (unpack, pad, scale, zero point, reshape), a fixed cost that is
larger than some small convolutions themselves. This kernel keeps the weight as the weight-only GEMV's bit
planes (:class:`~bitladder.kernels.numba_dequant.NumbaDequantKernel`: the codes at their stored width, C where
it was built, numba otherwise) and writes the fp32 weight in one pass; it lives for the call only, so the
memory held stays the packed weight's. Integer codes only: float formats take `cast-conv` (kernels/cast_conv.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.numba_dequant import NumbaDequantKernel
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


def as_matrix(qt: QuantizedTensor) -> QuantizedTensor:
    """The (O, I * kh * kw) view of a convolution weight quantised along output channels (the same parts)."""
    o = qt.shape[0]
    return QuantizedTensor(qt.packed, qt.scale, qt.zero_point, qt.qtype, (o, qt.numel // max(o, 1)), qt.layout,
                           qt.n_clipped, qt.table, qt.mask)


@register
class DequantConv2d:
    """``F.conv2d(x, W, bias, ...)`` with ``W`` dequantised from bit planes at each call (any stride, padding,
    dilation and groups: the convolution is torch's)."""

    name = "c-dequant-conv"
    op = "conv2d"
    requires: tuple[str, ...] = ()
    auto_rows = None
    rank = 20
    needs_batch = False  # torch's convolution takes unbatched and empty inputs too
    advice = ("a weight-only convolution computes in float (the float convolution plus one dequantisation a call), "
              "so it can at best tie fp32; only activations quantised as well (rungs ending -a8) run an integer "
              "convolution, faster where a layer's arithmetic outweighs its per-call costs")

    @classmethod
    def installed(cls) -> bool:
        """Whether the planes' dequantisation can run (numba, with the C pass where it was built)."""
        return NumbaDequantKernel.installed()

    @classmethod
    def available(cls, cpu=None) -> bool:
        """Same as :meth:`installed`: every path of the dequantisation gives the same bits on any CPU."""
        return cls.installed()

    @classmethod
    def takes(cls, policy: str, act: dict | None) -> bool:
        """Auto's choice for a weight-only layer (``act``: the layer's activation format, None here)."""
        return act is None and policy == "auto"

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """Integer codes along output channels (one scale per channel, per group or per tensor) in groups
        of whole bytes of every bit plane."""
        return (qt.table is None and qt.mask is None and qt.layout.axis == 0 and len(qt.shape) == 4
                and NumbaDequantKernel.applies(as_matrix(qt)))

    @classmethod
    def from_layer(cls, qt: QuantizedTensor, stride, padding, dilation, groups: int,
                   channels_last: bool = False) -> "DequantConv2d":
        """Repack the codes into bit planes once; KernelUnsupported where :meth:`applies` does not hold.
        ``channels_last``: the weight is laid out so, as the float layer's was (its outputs follow)."""
        if not cls.installed():
            raise KernelUnsupported("numba is not installed")
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout}: needs integer codes along output channels")
        self = cls()
        self.shape = tuple(qt.shape)
        self._planes = NumbaDequantKernel.from_qtensor(as_matrix(qt))
        self.args = (stride, padding, dilation, groups)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        return self

    def weight(self) -> torch.Tensor:
        """The dequantised fp32 weight, (O, I, kh, kw), in the layer's memory format."""
        return self._planes.weight().reshape(self.shape).contiguous(memory_format=self.format)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's float convolution of ``x`` with this call's dequantised weight."""
        return F.conv2d(x, self.weight(), None if bias is None else bias.float(), *self.args)

    @property
    def nbytes(self) -> int:
        """Bytes the bit planes and scales hold."""
        return self._planes.nbytes

    def __repr__(self) -> str:
        return f"DequantConv2d(shape={self.shape}, nbytes={self.nbytes})"
