"""What every Linear kernel shares: the base class with its declared needs, the weight normalisation
and the pure-PyTorch reference every kernel is tested against.

A kernel is built once from the weight (``Kernel.from_qtensor(qt)``), repacks it into its own runtime
layout (still low-bit: no fp32 copy of the weight is kept) and is then called with a float32
activation ``x`` of shape (M, K), returning (M, N) float32.

Each kernel class declares what it needs, and :mod:`bitladder.kernels.select` reads only that:

* ``requires``: CPU features (names of :data:`bitladder.kernels.cpu.FEATURES`) without which it is
  slow or wrong;
* ``applies(qt)``: the formats, layouts and group sizes it takes (``groups`` lists the group lengths);
* ``auto_rows``: the row counts where automatic selection picks it (None: only when named; ``rows(cpu, qt)``
  when the CPU or the weight's format changes them), and
  ``rank``: among the kernels that apply, lower goes first;
* ``advice``: a sentence for the results' warnings where a layer on it runs slower than fp32 (its known
  ceiling on this CPU, and the rung to take instead).
"""

from __future__ import annotations

import abc
import warnings

import torch
import torch.nn.functional as F

from bitladder.errors import BitladderError
from bitladder.kernels import fp32_gemm
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor, _unpack

ANY_ROWS = (1, 1 << 62)


class KernelUnsupported(BitladderError):
    """This kernel cannot run this weight (format, layout, group size or missing backend)."""


def reference_linear(qt: QuantizedTensor, x: torch.Tensor) -> torch.Tensor:
    """The ground truth: dequantise to fp32 and matmul."""
    return F.linear(x.float(), qt.dequantize(torch.float32))


def weight_parts(qt: QuantizedTensor, dtype: torch.dtype = torch.int32):
    """(codes (N, K) ``dtype``, scale (N, nb) fp32, zero point (N, nb) int32 (float32 where stored fractional,
    HQQ's) or None, group G).

    Tensor and channel granularities become one group per row of length K. The codes are a fresh tensor (a
    caller may change them in place); ``torch.int16`` holds every integer format at half int32's transient
    memory, which for a 32000 x 2048 LM head is 260 MB of a kernel's build; ``dtype=None`` skips them (a
    caller that reads :meth:`QuantizedTensor.unsigned_codes` instead).
    """
    if not qt.qtype.rules.integer_codes:
        raise KernelUnsupported(f"{qt.qtype.name} has no integer codes ({qt.qtype.kind})")
    if len(qt.shape) != 2:
        raise KernelUnsupported(f"Linear weights are 2-D, got shape {qt.shape}")
    n, k = qt.shape
    lay = qt.layout
    if lay.granularity != "tensor" and lay.axis % 2 != 0:
        raise KernelUnsupported("the output channel must be axis 0")
    c, _, nb, b = lay.dims(qt.shape)
    codes = None if dtype is None else qt.codes().reshape(n, k).to(dtype)
    scale = qt.scale.float().reshape(c, nb)
    zp = None
    if qt.zero_point is not None and qt.zero_point.is_floating_point():
        zp = qt.zero_point.float().reshape(c, nb)
    elif qt.zero_point is not None:
        zp = _unpack(qt.zero_point, qt.qtype, c * nb).reshape(c, nb).to(torch.int32)
    if lay.granularity == "tensor":
        scale = scale.expand(n, 1)
        zp = None if zp is None else zp.expand(n, 1)
        g = k
    elif lay.granularity == "channel":
        g = k
    else:
        g = b
    return codes, scale.contiguous(), None if zp is None else zp.contiguous(), g


def group_of(qt: QuantizedTensor) -> int | None:
    """Group length along K, or None for one scale per row (channel / tensor / a group >= K)."""
    lay = qt.layout
    if lay.granularity != "group" or lay.group >= qt.shape[-1]:
        return None
    return lay.group


def rows_times_plus(y: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y * r + bias`` written over ``y``, a GEMM's fresh output: the per-token kernels' last step.

    In place because a new large tensor per layer is what cost the time, not the arithmetic. Autograd
    cannot record an ``out=`` call, so a bias that is being trained gets a new tensor."""
    if bias is None:
        return y.mul_(r)
    if bias.requires_grad and torch.is_grad_enabled():
        return torch.addcmul(bias, y, r)
    return torch.addcmul(bias, y, r, out=y)


def as_x(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` checked to be (M, ``k``), as a detached contiguous float32 tensor; ValueError otherwise."""
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"expected x of shape (M, {k}), got {tuple(x.shape)}")
    if x.dtype is torch.float32 and not x.requires_grad and x.is_contiguous():
        return x  # as it is: three no-op calls cost a small layer's call a few microseconds
    return x.detach().float().contiguous()


def uint8_codes(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """``x`` quantised by ``torch.quantize_per_tensor`` to uint8 (one vectorised pass), as a plain uint8 tensor: a
    view of the quint8 result's bytes, no copy."""
    with warnings.catch_warnings():  # quantized tensor creation is deprecated; here it is only a fast cast
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def uint8_grid(lo: float, hi: float, levels: int) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid of ``levels`` steps over ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / levels, 1e-30)
    return scale, int(min(max(round(-lo / scale), 0), levels))


def nbytes_of(*arrays) -> int:
    """Total bytes of the given tensors or numpy arrays, None entries skipped."""
    total = 0
    for a in arrays:
        if a is None:
            continue
        total += a.numel() * a.element_size() if isinstance(a, torch.Tensor) else a.nbytes
    return total


class LinearKernel(abc.ABC):
    """Base class: ``from_qtensor`` builds, calling runs, ``nbytes`` is the memory it holds."""

    name = "kernel"
    op = "linear"
    requires: tuple[str, ...] = ()
    groups: tuple[int, ...] | None = None  # accepted group lengths; None: any (or one scale per row)
    auto_rows: tuple[int, int] | None = None
    rank = 100
    float_codes = False  # whether it takes float formats (fp16, fp8) besides integer codes
    #: what a "slower than fp32" warning adds for a layer on this kernel: why it can be, and what to take instead
    advice: str | None = None

    n: int
    k: int

    @classmethod
    def installed(cls) -> bool:
        """Whether its backend (a library, a torch op) is present in this environment."""
        return True

    @classmethod
    def available(cls, cpu: Cpu | None = None) -> bool:
        """Installed, and the CPU (as ``BITLADDER_CPU`` presents it) has what it needs."""
        return cls.installed() and (cpu or current()).has(*cls.requires)

    @classmethod
    def rows(cls, cpu: Cpu, qt: QuantizedTensor | None = None) -> tuple[int, int] | None:
        """The row counts where auto picks it on ``cpu`` for weight ``qt`` (``auto_rows`` unless the CPU or
        the weight's format changes the rule)."""
        return cls.auto_rows

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """Whether this weight's format, layout and group fit the kernel (not whether it is installed)."""
        return True

    @classmethod
    def group_ok(cls, qt: QuantizedTensor, row_ok: bool = True) -> bool:
        """Whether the weight's group length is in ``groups``; ``row_ok`` answers for one scale per row."""
        g = group_of(qt)
        return row_ok if g is None else cls.groups is None or g in cls.groups

    @classmethod
    @abc.abstractmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "LinearKernel":
        """Build (and repack once) from a quantised weight; raise KernelUnsupported if it cannot."""

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(x * in_scale) @ W.T + bias`` for (M, K) ``x``; the optional parts are the layer's."""
        x = as_x(x, self.k)
        if x.shape[0] == 0:
            return torch.zeros(0, self.n)
        return self._fused(x, bias, in_scale)

    def _fused(self, x: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor | None) -> torch.Tensor:
        """Input scale, kernel, bias, one after the other; kernels that can fuse them override this."""
        y = self._run(x if in_scale is None else x * in_scale)
        return y if bias is None else y.add_(bias)

    @abc.abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) float32 with M > 0 -> (M, N) float32."""

    @property
    def nbytes(self) -> int:
        """Bytes the kernel's packed weight holds."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, N={self.n}, K={self.k}, nbytes={self.nbytes})"


@register
class DequantKernel(LinearKernel):
    """The fallback: dequantise the whole weight every call, then the CPU's fp32 GEMM (:mod:`fp32_gemm`)."""

    name = "dequant-fp32"
    auto_rows = ANY_ROWS
    rank = 1000
    float_codes = True

    def __init__(self, qt: QuantizedTensor) -> None:
        self.qt = qt
        self.n, self.k = qt.shape
        self.gemm = fp32_gemm.engine(current())
        self._w = None
        if qt.qtype.name == "fp32":  # nothing to dequantise: the stored weight on the CPU's fp32 GEMM, as a conv says
            self.name = "fp32"
            w = qt.dequantize(torch.float32)
            self._w = w if w.data_ptr() == qt.packed.data_ptr() else None  # a view of the stored bytes: no copy held

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "DequantKernel":
        return cls(qt)

    def _weight(self) -> torch.Tensor:
        return self._w if self._w is not None else self.qt.dequantize(torch.float32)

    def _run(self, x):
        return fp32_gemm.linear(x.float(), self._weight(), None, self.gemm)

    def _fused(self, x, bias, in_scale):
        # bias inside the GEMM (its epilogue), as the float layer's F.linear has it
        return fp32_gemm.linear((x if in_scale is None else x * in_scale).float(), self._weight(), bias, self.gemm)

    @property
    def nbytes(self) -> int:
        """Bytes the kernel's packed weight holds."""
        return self.qt.nbytes
