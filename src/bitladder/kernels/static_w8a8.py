"""W8A8 with static activation scales (calibrated once, ``Act(dynamic=None)``) on the integer GEMMs.

The layer's calibrated grid fixes the input's range [lo, hi]: the input is quantised with one constant scale
and zero point, so a call has no min/max reduction to make (the dynamic kernels' first pass). Codes are those
of the layer's fake quantisation, ``clamp(round(x / s) + z, qmin, qmax)`` moved to uint8, wherever the GEMM
can take all 256 of them (VNNI, or weights of 7 bits); elsewhere the same range is cut into 127 steps
(:func:`bitladder.kernels.fbgemm_w8a8.act_levels`: a u8 x s8 pair sum then stays within 16 bits). A grid
of fewer than 256 codes clamps the input to its range first: the GEMM's quantiser clamps to 0..255 only.
oneDNN's kernel keeps the layer's 256 codes even there (``split``): each code is 128 * hi + lo, and one GEMM
over the rows [lo; hi] (0..127 and 0..1, without a zero point) stays within 16-bit pair sums (2 * 127 * 127);
lo + 128 * hi gives the layer's product, the zero point's term (zp * sum_k w) goes with the bias. Where the C
kernels were built (and the CPU has AVX2) the static family takes one exact GEMM of 16-bit pair products
instead (:mod:`bitladder.kernels.c_static`); the split is what remains without them.

Below :func:`~bitladder.kernels.select.onednn_min_rows` rows fbgemm's static linear (fp32 in, fp32 out) runs,
from there oneDNN's (at every size where fbgemm cannot take the grid whole:
:func:`bitladder.kernels.select.static_whole_on_fbgemm`). oneDNN's
takes codes, so a Hadamard-rotated layer's input is rotated and quantised in one C pass there
(:func:`bitladder.kernels.hadamard.static_codes` with a block, ``rotates``).
"""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import get_qtype
from bitladder.kernels import hadamard
from bitladder.kernels.base import uint8_codes, weight_parts
from bitladder.kernels.cpu import current
from bitladder.kernels.fbgemm_w8a8 import FbgemmW8A8Kernel
from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel
from bitladder.kernels.registry import register


def static_grid(scale: float, zero_point: float, qtype: str, levels: int) -> tuple[float, int, float, float]:
    """(step, uint8 zero point, lo, hi) of a calibrated ``qtype`` grid on a GEMM taking ``levels`` steps."""
    qt = get_qtype(qtype)
    lo, hi = (qt.qmin - zero_point) * scale, (qt.qmax - zero_point) * scale
    if qt.qmax - qt.qmin <= levels:  # the calibrated codes themselves, moved to start at 0
        return scale, int(zero_point - qt.qmin), lo, hi
    step = (hi - lo) / levels
    return step, int(min(max(round(-lo / step), 0), levels)), lo, hi


class _Static:
    """The calibrated grid a static kernel quantises with (set by :meth:`bind` before the first call)."""

    levels: int
    splits = False  # whether a grid finer than ``levels`` runs split into lo and hi rows (its own codes) here
    split = False  # whether this binding does
    _grid: tuple[float, int, float, float]
    _clamp: bool

    def bind(self, scale: float, zero_point: float, qtype: str):
        """Use the layer's calibrated activation grid; returns the kernel."""
        codes = get_qtype(qtype).qmax - get_qtype(qtype).qmin
        self.split = self.splits and codes > self.levels
        levels = 255 if self.split else self.levels
        self._grid = static_grid(scale, zero_point, qtype, levels)
        # the GEMM's quantiser clamps to the uint8 range only: a shorter grid (4-bit, or 127 steps) clamps first
        self._clamp = codes != 255 or levels != 255
        step, _, _, _ = self._grid
        self._inv, self._simd = hadamard.reciprocal(step), current().has("avx2")  # once, not per call
        return self

    def _input(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> torch.Tensor:
        xs = x if in_scale is None else x * in_scale
        if not self._clamp:
            return xs
        _, _, lo, hi = self._grid
        return xs.clamp_(lo, hi) if xs is not x else xs.clamp(lo, hi)

    def _c_codes(self, x: torch.Tensor, in_scale: torch.Tensor | None, split: bool, block: int = 1) -> torch.Tensor:
        """The C pass's codes of ``x`` on the grid: scaled, rotated by ``block``, clamped and split as asked."""
        _, zp, lo, hi = self._grid
        return hadamard.static_codes(x, in_scale, (lo, hi) if self._clamp else None, self._inv, zp, split,
                                     self._simd, block)


@register
class OnednnStaticKernel(_Static, OnednnW8A8Kernel):
    """int8 per-channel weights x uint8 activations on a calibrated grid, oneDNN's GEMM."""

    name = "int8-w8a8-onednn-static"
    splits = True

    @classmethod
    def from_qtensor(cls, qt) -> "OnednnStaticKernel":
        self = super().from_qtensor(qt)
        codes, scale, _, _ = weight_parts(qt)
        self._wsum = (codes.double().sum(1) * scale[:, 0].double()).float()  # each output's sum_k w (split)
        return self

    @property
    def rotates(self) -> bool:
        """Whether :meth:`prepare_rotated` runs here (the C transform was built)."""
        return hadamard.installed()

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        step, zp, _, _ = self._grid
        if hadamard.fast_path(x) and x.dim() == 2:  # scale, clamp, quantise and split in one C pass, same codes
            return self._split_parts(self._c_codes(x, in_scale, self.split), x.shape[0])
        return self._parts(uint8_codes(self._input(x, in_scale), step, zp))

    def prepare_rotated(self, x: torch.Tensor, block: int) -> tuple:
        """:meth:`prepare` of ``x @ H`` (block-Hadamard), rotated, quantised and split in one C pass."""
        return self._split_parts(self._c_codes(x, None, self.split, block), x.shape[0])

    def _split_parts(self, q: torch.Tensor, m: int) -> tuple:
        """:meth:`_parts` of codes the C pass has already split (when the kernel splits)."""
        step, zp, _, _ = self._grid
        return (q, step, zp, m) if self.split else (q, step, zp, None)

    def _parts(self, q: torch.Tensor) -> tuple:
        """(codes, step, zero point, None), or split: ([codes & 127; codes >> 7], step, zero point, rows)."""
        step, zp, _, _ = self._grid
        if not self.split:
            return q, step, zp, None
        m = q.shape[0]
        both = torch.empty((2 * m, q.shape[1]), dtype=torch.uint8)
        torch.bitwise_and(q, 127, out=both[:m])
        torch.bitwise_right_shift(q, 7, out=both[m:])
        return both, step, zp, m

    def finish(self, prep: tuple, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.split:
            return super().finish(prep, bias)
        both, step, zp, m = prep
        # one GEMM for both halves (one call runs faster than two at every size measured)
        y2 = super().finish((both, step, 0, None), None)
        y = y2[:m].add_(y2[m:], alpha=128).sub_(self._wsum, alpha=step * zp)
        return y if bias is None else y.add_(bias)


@register
class FbgemmStaticKernel(_Static, FbgemmW8A8Kernel):
    """The same on fbgemm's static linear (it quantises the fp32 input with the given grid itself)."""

    name = "int8-w8a8-fbgemm-static"

    @classmethod
    def from_qtensor(cls, qt) -> "FbgemmStaticKernel":
        self = super().from_qtensor(qt)
        self.levels = 127 if self.reduce_range else 255
        return self

    def _fused(self, x, bias, in_scale):
        step, zp, _, _ = self._grid
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(self._input(x, in_scale), step, zp,
                                                                              self._packed)
        return y if bias is None else y.add_(bias)

    def _run(self, x):
        return self._fused(x, None, None)
