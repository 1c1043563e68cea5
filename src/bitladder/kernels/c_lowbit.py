"""The C low-bit GEMV (``kernels/c/lowbit.c``): 1-, 2- and 4-bit codes (binary, ternary, int2, int3, int4, with
or without zero points) and symmetric 5- to 8-bit ones against int8 activations quantised per block at each
call, as llama.cpp's Q4 x Q8 dot products do. Every product fits the 16-bit pair sums of AVX2's u8 x s8
instruction (8-bit codes are multiplied as magnitude times a signed activation), so no VNNI is needed and
nothing saturates; with VNNI a single row's 8-bit codes go in as w + 128 (sums in 32 bits) and the block's
128 * sum(x) comes back out with the offset term, one instruction fewer per 32 codes; CPUs without AVX2 run the portable C path, which gives the same bits.

Built by pip at install (``setup.py``) where a compiler exists; without one the kernel reports itself not
installed and selection uses the others. :meth:`CLowbitKernel.reference` is the same arithmetic in PyTorch.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

from bitladder.formats.kinds.base import Kind
from bitladder.kernels.base import KernelUnsupported, LinearKernel, group_of, nbytes_of, weight_parts
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.onnx_nbits import integer_codes
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

try:  # by its full name: the compiled module, not the package that imports this file
    _lowbit = importlib.import_module("bitladder.kernels._lowbit")
except ImportError:  # no compiler at install time
    _lowbit = None

def c_module():
    """The compiled module (``gemv``, ``xnor``), or None where it was not built."""
    return _lowbit


_STORE = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}  # code width -> the bit-plane width it is stored at


@register
class CLowbitKernel(LinearKernel):
    """Codes of up to 8 bits x int8 activations (one scale per block of up to 128 inputs), exact integer dots."""

    name = "c-lowbit-a8"
    entry = "gemv"  # the C function (c_tiles.CTilesKernel calls `tiles`, same arguments, its own weight layout)
    # 8-bit codes: ahead of MatMulNBits and fp16 codes to two rows, to four with vpdpbusd (docs/DESIGN.md, 'The C
    # GEMV on VNNI CPUs'; notes.md, 'Eight-bit codes at a few rows')
    auto_rows = (1, 2)
    vnni_rows = (1, 4)
    rank = 5

    @classmethod
    def installed(cls) -> bool:
        return _lowbit is not None

    @classmethod
    def rows(cls, cpu: Cpu, qt: QuantizedTensor | None = None):
        if not cpu.has("avx2"):
            return None  # the portable path is for correctness, not speed
        if qt is not None and _STORE[qt.qtype.rules.width(qt.qtype)] <= 4:
            return None  # c-lowbit-tiles: the same grid, faster at every row count (docs/DESIGN.md, 'One grid')
        return cls.vnni_rows if cpu.has("avx512_vnni") else cls.auto_rows

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        g, width = group_of(qt), qt.qtype.rules.width(qt.qtype)
        return (integer_codes(qt) and width in _STORE and (width <= 4 or qt.zero_point is None)
                and (g is None or g % 32 == 0) and (qt.layout.granularity == "tensor" or qt.layout.axis % 2 == 0))

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, simd: int | None = None) -> "CLowbitKernel":
        """Repack once; ``simd`` forces the AVX-512 VNNI (2), AVX2 (1 or True) or portable (0 or False) path
        (each falls back to the next where the host lacks it), else the CPU decides."""
        if not cls.installed():
            raise KernelUnsupported("the C kernels were not built (no compiler when bitladder was installed)")
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout.granularity}: needs codes of at most 4 bits (8 "
                                    "without zero points) and groups that are multiples of 32")
        scale, zp, g, bits, kp, xb = grid(qt)
        q = qt.qtype
        n, k = qt.shape
        sb = 32 * (8 // bits)  # codes per 32-byte superblock
        self = cls()
        self.n, self.k, self.kp, self.g, self.bits, self.xb = n, k, kp, g, bits, xb
        mult, off = q.rules.affine(q)
        u = np.zeros((n, kp), np.uint8)
        u[:, :k] = qt.unsigned_codes().reshape(n, k).numpy()
        self.w = _superblocks(u, bits, sb)
        if bits == 8:  # signed, so |u| x signed x fits a 16-bit pair sum (kernels/c/lowbit.c)
            off = off - 128 * mult
        nbw = kp // g
        # eight spare entries at the end: the AVX2 path loads a row's scales eight blocks at a time
        ws = np.zeros(n * nbw + 8, np.float16)
        ws[: n * nbw].reshape(n, nbw)[:, : scale.shape[1]] = scale.numpy()
        self.ws = ws
        self.mult, self.off, self.zo = int(mult), int(off), None
        if zp is not None:
            zo = np.zeros(n * nbw + 8, np.uint8)
            zo[: n * nbw].reshape(n, nbw)[:, : zp.shape[1]] = (zp + off).numpy()
            self.zo, self.off = zo, 0
        self.simd = simd_path(simd, "avx512_vnni")
        return self

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.w, self.ws, self.zo)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(x.shape[0], self.n)
        getattr(_lowbit, self.entry)(self.w, self.ws, self.zo, x.numpy(), y.numpy(), x.shape[0], self.n, self.k,
                                     self.kp, self.g, self.xb, self.bits, self.mult, self.off, self.simd,
                                     torch.get_num_threads())
        return y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's arithmetic in PyTorch, step for step (the C paths must give these bits)."""
        m = x.shape[0]
        xq, s = int8_blocks(x, self.kp, self.xb)
        bits, per = self.bits, 8 // self.bits
        w = torch.from_numpy((self.w.view(np.int8) if bits == 8 else self.w).astype(np.int64)).view(self.n, -1, 1, 32)
        u = ((w >> (bits * torch.arange(per)).view(1, 1, per, 1)) & ((1 << bits) - 1) if bits < 8 else w)
        u = u.reshape(self.n, -1, self.xb)
        dots = torch.einsum("nbk,mbk->mnb", u, xq)
        gw = torch.arange(self.kp // self.xb) * self.xb // self.g
        nbw = self.kp // self.g
        off = (torch.from_numpy(self.zo[: self.n * nbw].astype(np.int64)).view(self.n, nbw)[:, gw]
               if self.zo is not None else self.off)
        d = self.mult * dots - off * xq.sum(-1)[:, None, :]
        ws = torch.from_numpy(self.ws[: self.n * nbw].astype(np.float32)).view(self.n, nbw)
        scale = ws[:, gw][None] * s.squeeze(-1)[:, None, :]
        lanes = torch.zeros(m, self.n, 8)
        for b in range(d.shape[-1]):  # block b into float lane b % 8, then the fixed tree of the C code
            lanes[..., b % 8] = lanes[..., b % 8] + d[..., b].to(torch.float32) * scale[..., b]
        s = lanes[..., :4] + lanes[..., 4:]
        return (s[..., 0] + s[..., 2]) + (s[..., 1] + s[..., 3])


def grid(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor | None, int, int, int, int]:
    """(scale, zero point, group, stored bits, padded K, activation block) of a weight the C kernels take: K padded
    to whole 32-byte superblocks and groups, activations quantised per block of gcd(group, 128). Every C kernel
    on int8 activations uses it, so they all quantise the same blocks."""
    _, scale, zp, g = weight_parts(qt, None)
    bits = _STORE[qt.qtype.rules.width(qt.qtype)]
    k, sb = qt.shape[1], 32 * (8 // bits)  # codes per 32-byte superblock
    if scale.shape[1] == 1:
        kp = g = -(-k // sb) * sb
    else:
        step = math.lcm(g, sb)
        kp = -(-k // step) * step
    return scale, zp, g, bits, kp, math.gcd(g, 128)


def simd_path(simd: int | None, wide: str) -> int:
    """The C path a kernel runs: ``simd`` when forced, else 2 where the CPU (as ``BITLADDER_CPU`` presents it)
    has AVX2 and ``wide`` (the feature of the kernel's 512-bit or VNNI path), 1 with AVX2 alone, 0 without."""
    if simd is not None:
        return int(simd)
    cpu = current()
    return 2 if cpu.has("avx2", wide) else int(cpu.has("avx2"))


def int8_blocks(x: torch.Tensor, kp: int, xb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The C kernels' activation grid in PyTorch: ``x`` (M, K) zero-padded to ``kp``, int8 codes per block of
    ``xb`` (as int64, (M, kp / xb, xb)) and their scales absmax / 127 ((M, kp / xb, 1); 0 for a zero block)."""
    m = x.shape[0]
    xp = torch.zeros(m, kp)
    xp[:, : x.shape[1]] = x.float()
    xb_ = xp.view(m, -1, xb)
    s = xb_.abs().amax(dim=-1, keepdim=True) / 127.0
    xq = torch.where(s > 0, torch.round(xb_ / torch.where(s > 0, s, 1)), 0).clamp(-127, 127).to(torch.int64)
    return xq, s


#: rows packed per step: the uint16 plane sums of a step stay a few MB whatever the layer (an LM head of
#: 32000 rows took 700 MB above its stored bytes to build whole)
_ROWS_PER_STEP = 256


def _superblocks(u: np.ndarray, bits: int, sb: int) -> np.ndarray:
    """(n, kp) unsigned codes -> the kernel's rows of 32-byte superblocks: bit plane p of byte j holds code
    32 * p + j; 8-bit codes are stored signed (u - 128)."""
    n, kp = u.shape
    per = 8 // bits
    shifts = (bits * np.arange(per, dtype=np.uint16))[:, None]
    w = np.empty((n, kp // per), np.uint8)
    for r in range(0, n, _ROWS_PER_STEP):
        rows = u[r: r + _ROWS_PER_STEP]
        planes = rows.reshape(len(rows), kp // sb, per, 32).astype(np.uint16) << shifts
        packed = planes.sum(axis=2, dtype=np.uint16).reshape(len(rows), -1)
        if bits == 8:
            packed = (packed.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        w[r: r + len(rows)] = packed
    return w


_SCALE_DTYPES = {torch.float16: 0, torch.float32: 1, torch.bfloat16: 2}


class RowGather:
    """``qt.dequantize()[rows]`` in one C call (``gather_rows`` in ``kernels/c/lowbit.c``) for a weight whose rows
    of 1-, 2-, 4- or 8-bit integer codes start on byte boundaries, one scale per row or group: an embedding
    lookup. The same float operations as :meth:`QuantizedTensor.dequantize`, so the same bits; on MiniLM a
    sentence's torch path took more than ten small operations per lookup. :meth:`plan` says where it applies."""

    def __init__(self, qt: QuantizedTensor, bits: int, zkind: int):
        c, k, nb, b = qt.layout.dims(qt.shape)
        self.qt, self.c, self.k, self.nb, self.b, self.bits, self.zkind = qt, c, k, nb, b, bits, zkind
        self.mult, self.off = (int(v) for v in qt.qtype.rules.affine(qt.qtype))
        # views of the weight's own buffers (no copies: the layer's buffers are contiguous), made once
        self._w, self._s = _raw(qt.packed), _raw(qt.scale)
        self._z = None if qt.zero_point is None else _raw(qt.zero_point)
        self._sdt = _SCALE_DTYPES[qt.scale.dtype]

    @classmethod
    def plan(cls, qt: QuantizedTensor) -> "RowGather | None":
        """The gatherer for ``qt``, or None where the C module was not built or the format does not fit."""
        rules, lay = qt.qtype.rules, qt.layout
        if (_lowbit is None or len(qt.shape) != 2 or lay.axis != 0 or lay.granularity not in ("channel", "group")
                or not rules.integer_codes or qt.table is not None or qt.mask is not None or qt.scale is None
                or qt.scale.dtype not in _SCALE_DTYPES or any(getattr(type(rules), f) is not getattr(Kind, f)
                                                              for f in ("decode", "unpack", "unpack_unsigned"))):
            return None
        bits = rules.code_bits(qt.qtype)
        c, k, nb, _ = lay.dims(qt.shape)
        if bits not in (1, 2, 4, 8) or rules.row_bytes(qt.qtype, k) is None or qt.scale.numel() != c * nb:
            return None
        zp = qt.zero_point
        if zp is None:
            return cls(qt, bits, 0)
        if zp.is_floating_point():
            return cls(qt, bits, 2 + _SCALE_DTYPES[zp.dtype]) if zp.dtype in _SCALE_DTYPES else None
        return cls(qt, bits, 1)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (any shape of integer indices) as float32, shape ``(*idx.shape, K)``."""
        rows = idx.reshape(-1)
        if rows.dtype != torch.int64 or not rows.is_contiguous():
            rows = rows.to(torch.int64).contiguous()
        out = torch.empty(*idx.shape, self.k)
        _lowbit.gather_rows(self._w, rows.numpy(), out.numpy(), self.c, self.k, self.bits, self.mult, self.off,
                            self._s, self._sdt, self.nb, self.b, self._z, self.zkind)
        return out


def _raw(t: torch.Tensor) -> np.ndarray:
    """A tensor's bytes as numpy (16-bit floats as int16: numpy has no bf16), a view where it is contiguous."""
    t = t.detach().contiguous()
    return (t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
