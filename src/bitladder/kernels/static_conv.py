"""Conv2d W8A8 with static activation scales (calibrated once, ``Act(dynamic=None)``) on oneDNN's integer convolution.

The layer's calibrated grid fixes the input's codes, ``clamp(round(x / s) + z, qmin, qmax)``: the kernel quantises
with exactly that grid, moved to uint8, and skips the dynamic kernel's min/max pass. It runs only where oneDNN's
convolution takes all the grid's codes against these weights (:func:`bitladder.kernels.fbgemm_w8a8.levels_for`: VNNI,
or weights of 7 bits); elsewhere a u8 x s8 pair sum could leave 16 bits, so the layer keeps its simulated path
(fake-quantised input, float convolution), which gives the same values. Without it a static ``-a8`` rung of a CNN
only simulated its activations in every convolution.
"""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import get_qtype
from bitladder.kernels.base import KernelUnsupported
from bitladder.kernels.onednn_conv import OnednnConv2dW8A8
from bitladder.kernels.registry import register
from bitladder.kernels.static_w8a8 import static_grid


@register
class OnednnConv2dStatic(OnednnConv2dW8A8):
    """``F.conv2d`` of the input on the layer's calibrated uint8 grid with int8 weights, integer accumulation."""

    name = "int8-w8a8-onednn-conv-static"
    rank = 15
    quantises_input = True  # the layer hands it the raw input (input scale applied), not its simulated rounding

    @classmethod
    def takes(cls, policy: str, act: dict | None) -> bool:
        """Auto (or this kernel named) for a layer with a static integer activation grid of at most 256 codes."""
        if act is None or act.get("dynamic") or act["qtype"] == "binary" or policy not in ("auto", cls.name):
            return False
        qt = get_qtype(act["qtype"])
        return qt.rules.integer_codes and qt.qmax - qt.qmin <= 255

    def bind(self, scale: float, zero_point: float, qtype: str) -> "OnednnConv2dStatic":
        """Use the layer's calibrated grid; KernelUnsupported where this CPU's integer convolution cannot take all
        its codes against these weights (the layer then keeps its simulated path)."""
        q = get_qtype(qtype)
        if q.qmax - q.qmin > self.levels:
            raise KernelUnsupported(f"a {q.qmax - q.qmin + 1}-code grid against these weights needs 32-bit pair sums "
                                    f"(VNNI) or weights of 7 bits; this CPU takes {self.levels + 1} codes")
        self._step, self._act_zp, lo, hi = static_grid(scale, zero_point, qtype, self.levels)
        # quantize_per_tensor clamps to 0..255 only: a shorter grid clamps the input to its range first
        self._range = None if q.qmax - q.qmin == 255 else (lo, hi)
        return self

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(N, C, H, W) float32 with N > 0 -> (N, O, H', W') float32, as ``F.conv2d`` lays it out."""
        if self._range is not None:
            x = x.clamp(*self._range)
        return self._conv(x, self._step, self._act_zp, bias)

    def __repr__(self) -> str:
        return f"OnednnConv2dStatic(stride/padding/dilation/groups={self.args}, nbytes={self.nbytes})"
