"""Float-format Conv2d (fp16, bf16, fp8 with one scale per output channel or none): the stored values cast to fp32
in one pass per call, then torch's float convolution, on exactly the weight the layer's own path computes.

The layer's own path dequantises through the generic route (codes, blocks, scale, layout), a fixed cost per call
that small convolutions felt: the digits demo's float rungs ran their convolutions on that fallback. Here the
stored bytes are viewed in their dtype once, at build, and each call is one cast (and a multiply by the channel
scales for fp8: :func:`bitladder.kernels.widen.widened`, in C where built); the fp32 weight lives for the call only.
"""

from __future__ import annotations

import torch

from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.dequant_conv import DequantConv2d
from bitladder.kernels.registry import register
from bitladder.kernels.widen import widened
from bitladder.tensor.quantized import QuantizedTensor

#: the float formats it takes (fp64 and fp32 compute as stored: nothing to cast)
FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


@register
class CastConv2d(DequantConv2d):
    """``F.conv2d(x, W, bias, ...)`` with ``W`` cast from the stored float values at each call (any stride,
    padding, dilation and groups: the convolution is torch's). Auto's choice for a weight-only layer, as
    :class:`DequantConv2d` is for integer codes (its ``takes`` and call)."""

    name = "cast-conv"
    rank = 25
    advice = ("a float-format convolution computes in fp32 (one cast of the weight a call, then the float "
              "convolution), so it can at best tie fp32")

    @classmethod
    def installed(cls) -> bool:
        """Always: torch's cast, or the C pass where built."""
        return True

    @classmethod
    def available(cls, cpu=None) -> bool:
        """Always: a cast and torch's convolution, the same values on any CPU."""
        return True

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """A 4-D weight in a format of :data:`FORMATS`, one scale per output channel (axis 0) or per tensor or
        none, stored dense."""
        lay = qt.layout
        per_channel = lay.granularity == "tensor" or lay.granularity == "channel" and lay.axis == 0
        return (qt.qtype.name in FORMATS and len(qt.shape) == 4 and per_channel and qt.zero_point is None
                and qt.table is None and qt.mask is None)

    @classmethod
    def from_layer(cls, qt: QuantizedTensor, stride, padding, dilation, groups: int,
                   channels_last: bool = False) -> "CastConv2d":
        """View the stored values once; KernelUnsupported where :meth:`applies` does not hold. ``channels_last``:
        the weight is laid out so, as the float layer's was (its outputs follow)."""
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout}: needs a 4-D weight in {', '.join(FORMATS)} "
                                    "with one scale per output channel or none")
        self = cls()
        self.shape = tuple(qt.shape)
        o = self.shape[0]
        self._values = qt.codes().reshape(o, -1).contiguous()  # a view of the stored bytes in their dtype
        self._scale = None if qt.scale is None else qt.scale.float().reshape(-1).expand(o).contiguous()
        self.args = (stride, padding, dilation, groups)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self._bytes = qt.nbytes
        return self

    def weight(self) -> torch.Tensor:
        """The fp32 weight, (O, I, kh, kw), in the layer's memory format."""
        w = widened(self._values, self._scale).reshape(self.shape)
        return w if self.format is torch.contiguous_format else w.contiguous(memory_format=self.format)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values and scales."""
        return self._bytes

    def __repr__(self) -> str:
        return f"CastConv2d(shape={self.shape}, nbytes={self.nbytes})"
