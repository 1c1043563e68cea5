"""Conv2d W8A8 on oneDNN's integer convolution (``torch.ops.onednn.qconv2d_pointwise``, torch's CPU wheel).

The weight is int8 symmetric per output channel (or per tensor), prepacked once. Each call quantises the
input to uint8 on one asymmetric grid over ``[min(x, 0), max(x, 0)]``: one scale per call, since a
convolution mixes the positions of an image and the rows of a Linear's trick (a scale per row) do not
exist here. The codes are laid out channels-last, the layout oneDNN's int8 convolution runs in; scales
and bias are applied in its epilogue. The fp32 output comes in the memory format ``F.conv2d``'s would (the
input's, or channels-last where the float layer's weight was): a channels-last output after an NCHW input broke
models that ``view`` it (``y.view(n, -1)``).

Dense convolutions run faster than fp32 ``nn.Conv2d`` (``bitladder bench --suite conv``, measured:
docs/results/bench-conv.json); depthwise ones ran slower in int8, so grouped convolutions keep the float
path (docs/DESIGN.md, 'Conv2d W8A8').
"""

from __future__ import annotations

import warnings

import torch

from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.fbgemm_w8a8 import levels_for
from bitladder.kernels.base import uint8_codes
from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel, _grid
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


#: fewer input channels run slower in int8 than in fp32 (the digits CNN's first convolution, RGB stems: figures in
#: docs/DESIGN.md, 'Conv2d W8A8')
MIN_IN_CHANNELS = 4


def memory_format(x: torch.Tensor, channels_last: bool = False) -> torch.memory_format:
    """The layout ``F.conv2d`` gives its output for input ``x`` (and a weight stored channels-last where
    ``channels_last``): channels-last when either is stored so (``x`` not also plainly contiguous, as a tensor of
    one channel or one pixel is), else contiguous."""
    if channels_last or (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


@register
class OnednnConv2dW8A8:
    """``F.conv2d(x, W, bias, stride, padding, dilation)`` with int8 weights and per-call uint8 activations."""

    name = "int8-w8a8-onednn-conv"
    op = "conv2d"
    requires: tuple[str, ...] = ()
    auto_rows = None
    rank = 10
    needs_batch = True  # a non-empty 4-D input (an unbatched or empty one takes the layer's float path)

    @classmethod
    def installed(cls) -> bool:
        """Whether torch has oneDNN's quantized linear and ``qconv2d_pointwise``."""
        return OnednnW8A8Kernel.installed() and hasattr(torch.ops.onednn, "qconv2d_pointwise")

    @classmethod
    def available(cls, cpu=None) -> bool:
        """Same as :meth:`installed`; ``cpu`` is accepted for the kernel interface and not checked."""
        return cls.installed()

    @classmethod
    def takes(cls, policy: str, act: dict | None) -> bool:
        """The dynamic W8A8 policies (what ``Act(dynamic=...)`` sets); auto keeps a convolution's activations float."""
        return policy.startswith("int8-w8a8")

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """int8 (or int7) symmetric 4-D weights, one scale per output channel or per tensor."""
        return (qt.qtype.name in ("int8", "int7") and qt.zero_point is None and qt.layout.granularity != "group"
                and len(qt.shape) == 4 and not (qt.layout.granularity == "channel" and qt.layout.axis != 0))

    @classmethod
    def from_layer(cls, qt: QuantizedTensor, stride, padding, dilation, groups: int,
                   channels_last: bool = False) -> "OnednnConv2dW8A8":
        """Prepack a symmetric int8 4-D weight for these conv arguments; KernelUnsupported if it cannot.
        ``channels_last``: the float layer's weight was, so its outputs are channels-last whatever the input."""
        if not cls.installed():
            raise KernelUnsupported("torch has no oneDNN quantized convolution (torch.ops.onednn.qconv2d_pointwise)")
        if not cls.applies(qt):
            raise KernelUnsupported("oneDNN W8A8 convolution needs int8 (or int7) symmetric 4-D weights per output "
                                    "channel or per tensor")
        if groups != 1:
            raise KernelUnsupported("grouped and depthwise convolutions run slower in int8 than in fp32 "
                                    "(docs/DESIGN.md): kept in float")
        if qt.shape[1] < MIN_IN_CHANNELS:
            raise KernelUnsupported(f"{qt.shape[1]} input channel(s): too short a reduction for the integer "
                                    "convolution (docs/DESIGN.md): kept in float")
        if isinstance(padding, str):
            raise KernelUnsupported(f"padding={padding!r}: the int8 convolution takes explicit padding")
        self = cls()
        o = qt.shape[0]
        codes = qt.codes().reshape(qt.shape).to(torch.int8)
        self._scale = qt.scale.float().reshape(-1).expand(o).contiguous()
        self._zp = torch.zeros(o, dtype=torch.int32)
        self.levels = levels_for(codes, "onednn")
        self.args = [list(stride), list(padding), list(dilation), groups]
        self.channels_last = channels_last
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._packed = torch.ops.onednn.qconv_prepack(codes.contiguous(memory_format=torch.channels_last),
                                                          self._scale, 1.0, 0, *self.args, None)
        self.nbytes = codes.numel() + o * 4
        return self

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(N, C, H, W) float32 with N > 0 -> (N, O, H', W') float32, in ``x``'s memory format."""
        lo, hi = torch.aminmax(x)
        return self._conv(x, *_grid(float(lo), float(hi), self.levels), bias)

    def _conv(self, x: torch.Tensor, scale: float, zp: int, bias: torch.Tensor | None) -> torch.Tensor:
        """The integer convolution of ``x`` quantised to uint8 on the grid (``scale``, ``zp``)."""
        q = uint8_codes(x, scale, zp).contiguous(memory_format=torch.channels_last)
        y = torch.ops.onednn.qconv2d_pointwise(q, scale, zp, self._packed, self._scale, self._zp,
                                               None if bias is None else bias.float(), *self.args, 1.0, 0,
                                               torch.float32, "none", [], "")
        return y.contiguous(memory_format=memory_format(x, self.channels_last))

    def __repr__(self) -> str:
        return f"OnednnConv2dW8A8(stride/padding/dilation/groups={self.args}, nbytes={self.nbytes})"
