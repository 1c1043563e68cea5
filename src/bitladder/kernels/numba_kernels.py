"""numba kernels: weight-only GEMV from bit planes (int2..int8, ternary, binary) and XNOR-popcount (which runs
the C popcount of ``kernels/c/lowbit.c`` where that was built: numba's serial loop below its threading
threshold used one core at batch 1).

Each declares what it takes (``applies``) and when auto picks it (``auto_rows``); see :mod:`bitladder.kernels.select`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from bitladder.kernels.base import KernelUnsupported, LinearKernel, group_of, nbytes_of, weight_parts
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.onnx_nbits import integer_codes
from bitladder.kernels.packrows import pack_rows
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


def _unsigned(qt: QuantizedTensor, zp: torch.Tensor | None):
    """Unsigned codes ``u`` (uint8, (N, K)), multiplier and offset with ``w = s * (mult * u - off)``.

    Returns (u, mult, off) where ``off`` is a python int or an (N, nb) tensor.
    """
    q = qt.qtype
    mult, off = q.rules.affine(q)
    return qt.unsigned_codes().reshape(qt.shape), mult, (off if zp is None else zp + off)


def _planes(width: int) -> list[int]:
    """Bit planes a code of ``width`` bits is split into (widest first)."""
    if width in (1, 2, 4, 8):
        return [width]
    out, left = [], width
    for p in (4, 2, 1):
        if left >= p:
            out.append(p)
            left -= p
    return out


def ops():
    """The compiled loops (:mod:`numba_ops`), imported at first use: numba and LLVM take about a second and
    60 MB to import, which a process that never runs these kernels should not pay."""
    from bitladder.kernels import numba_ops

    return numba_ops


class _NumbaKernel(LinearKernel):
    """Kernels compiled by numba: available only where numba is installed."""

    group_multiple = 8  # a group must be whole bytes of every bit plane

    @classmethod
    def installed(cls) -> bool:
        return importlib.util.find_spec("numba") is not None

    @classmethod
    def group_ok(cls, qt: QuantizedTensor, row_ok: bool = True) -> bool:
        g = group_of(qt)
        return row_ok if g is None else g % cls.group_multiple == 0

    @classmethod
    def _require(cls) -> None:
        if not cls.installed():
            raise KernelUnsupported("numba is not installed")


@register
class NumbaLowbitKernel(_NumbaKernel):
    """Weight-only kernel for int2..int8 / uint2..uint8 / ternary / binary, fp32 activations.

    Runtime layout: rows padded to ``nb`` groups of ``gp`` (a multiple of 8) codes, the unsigned code
    split into bit planes of width 4/2/1 (8 stays whole) with ``w = s * (sum_p mult_p u_p - off)``.
    ``y = sum_p mult_p GEMV_p(x) - xsum @ (s*off).T``: one pass per plane, the offset from the
    per-group sums of ``x``.
    """

    name = "numba"
    auto_rows = (1, 1)  # its tiled path for M > 1 is slower than fp32
    rank = 20

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        # a fractional zero point z (HQQ) is a float offset like any other: w = s * u - s * z, the reference's
        # (u - z) * s up to float rounding
        return integer_codes(qt, fractional_zero_points=True) and cls.group_ok(qt)
    tile_from_batch = 4  # M at and above which row tiles are dequantised and handed to BLAS
    tile_floats = 1 << 20  # 4 MiB fp32 tiles

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "NumbaLowbitKernel":
        cls._require()
        _, scale, zp, g = weight_parts(qt, None)
        n, k = qt.shape
        nb = scale.shape[1]
        if nb > 1 and g % cls.group_multiple:
            raise KernelUnsupported(f"group size {g} is not a multiple of {cls.group_multiple}")
        gp = g if nb > 1 else -(-max(k, 1) // 8) * 8
        kp = nb * gp
        u, mult, off = _unsigned(qt, zp)
        width = qt.qtype.rules.width(qt.qtype)
        self = cls()
        self.n, self.k, self.nb, self.gp, self.kp = n, k, nb, gp, kp
        self.name = f"numba-{qt.qtype.name}"
        up = np.zeros((n, kp), np.uint8)  # one byte a weight: the build of an LM head stays near its stored size
        up[:, :k] = u.numpy()
        del u
        self.planes = []  # (bits, packed rows, multiplier)
        if width == 8 and qt.qtype.signed:
            w8 = np.zeros((n, kp), np.int8)
            w8[:, :k] = np.subtract(up[:, :k], off, dtype=np.int16)  # the signed codes: mult * u - off, mult 1
            self.planes.append((8, w8, float(mult)))
            off = 0
        else:
            shift = width
            for p in _planes(width):
                shift -= p
                plane = (up >> shift) & ((1 << p) - 1)
                self.planes.append((p, pack_rows(plane, p) if p < 8 else plane.astype(np.uint8),
                                    float(mult * (1 << shift))))
        self.s = np.ascontiguousarray(scale.numpy(), dtype=np.float32)
        if isinstance(off, torch.Tensor):
            self.so = (scale * off.float()).numpy().astype(np.float32)
        else:
            self.so = (self.s * np.float32(off)).astype(np.float32) if off else None
        return self

    @property
    def nbytes(self) -> int:
        """Bytes the bit planes and scales hold."""
        return nbytes_of(*(p[1] for p in self.planes), self.s, self.so)

    def _pad(self, x: torch.Tensor) -> np.ndarray:
        xn = x.numpy()
        if self.kp == self.k:
            return xn
        xp = np.zeros((xn.shape[0], self.kp), np.float32)
        xp[:, : self.k] = xn
        return xp

    def _run(self, x):
        xp = self._pad(x)
        m = xp.shape[0]
        if m >= self.tile_from_batch:
            return self._run_tiles(xp)
        if self.so is None:
            out = np.zeros((m, self.n), np.float32)
        else:
            xsum = xp.reshape(m, self.nb, self.gp).sum(-1, dtype=np.float32)
            out = -(xsum @ self.so.T)
        o = ops()
        for bits, w, mult in self.planes:
            if bits == 8:
                xl = xp
            else:
                per = 8 // bits
                xl = np.ascontiguousarray(xp.reshape(m, self.kp // per, per).transpose(0, 2, 1))
            o.GEMV[bits](w, xl, self.s, np.float32(mult), self.gp, out)
        return torch.from_numpy(out)

    def _run_tiles(self, xp: np.ndarray) -> torch.Tensor:
        rows = max(16, min(self.n, self.tile_floats // max(self.kp, 1)))
        tile = np.empty((rows, self.kp), np.float32)
        so = self.so if self.so is not None else np.zeros_like(self.s)
        xt = torch.from_numpy(xp)
        out_t = torch.empty(self.n, xp.shape[0])
        tt = torch.from_numpy(tile)
        o = ops()
        for n0 in range(0, self.n, rows):
            n1 = min(self.n, n0 + rows)
            for i, (bits, w, mult) in enumerate(self.planes):
                if bits == 8:
                    o.dequant_rows_b8(w, n0, n1, tile)
                else:
                    o.dequant_rows(w, bits, np.float32(mult), n0, n1, tile, i == 0)
            o.scale_rows(tile, self.s, so, n0, n1, self.gp)
            torch.mm(tt[: n1 - n0], xt.T, out=out_t[n0:n1])
        return out_t.T.contiguous()


XNOR_PARALLEL_WORDS = 1 << 22  # word operations (rows x weight words) from which threads pay off


def xnor_path(cpu: Cpu) -> int:
    """The C popcount for the CPU as ``BITLADDER_CPU`` presents it: 2 AVX-512 VPOPCNTDQ, 1 AVX2 (a nibble lookup, also
    on AVX-512 CPUs without VPOPCNTDQ such as Skylake-SP), 0 portable; C falls back from whichever the host lacks."""
    if cpu.has("avx2", "avx512f", "avx512bw", "vpopcntdq"):
        return 2
    return int(cpu.has("avx2"))


@register
class XnorKernel(_NumbaKernel):
    """Binary weights x binary activations: ``beta[m] * s[n] * (K - 2 popcount(w ^ sign(x)))``.

    This is XNOR-Net's approximation, not the weight-only product: the activation is replaced by
    ``sign(x) * mean|x|`` per token. Groups must be whole 64-bit words (G % 64 == 0) or one per row.
    ``backend`` is ``"c"`` (the compiled popcount, on torch's threads) where built, else ``"numba"``.
    """

    name = "binary-xnor"
    kinds = ("binary",)  # sign bits: XNOR-popcount is a product of signs
    group_multiple = 64  # groups of whole 64-bit words

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return qt.qtype.kind in cls.kinds and len(qt.shape) == 2 and cls.group_ok(qt)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, backend: str | None = None) -> "XnorKernel":
        cls._require()
        if qt.qtype.kind not in cls.kinds:
            raise KernelUnsupported("XNOR-popcount needs binary weights")
        codes, scale, _, g = weight_parts(qt)
        n, k = qt.shape
        nb = scale.shape[1]
        if nb > 1 and g % cls.group_multiple:
            raise KernelUnsupported(f"XNOR groups must be multiples of {cls.group_multiple}, got {g}")
        gp = g if nb > 1 else -(-max(k, 1) // 64) * 64
        self = cls()
        self.n, self.k, self.nb, self.gwords = n, k, nb, gp // 64
        up = np.zeros((n, nb * gp), np.uint8)
        up[:, :k] = ((codes + 1) // 2).numpy()
        self.wb = pack_rows(up, 1).view(np.uint64)
        self.s = np.ascontiguousarray(scale.numpy(), dtype=np.float32)
        self.backend = backend or ("c" if c_module() is not None else "numba")
        self.hw = xnor_path(current())  # read when built, as the other kernels do, not per call
        if self.backend not in ("c", "numba") or (self.backend == "c" and c_module() is None):
            raise KernelUnsupported(f"XNOR backend {self.backend!r}: accepted numba, or c where the C kernels are built")
        return self

    @staticmethod
    def binarize(x: torch.Tensor) -> torch.Tensor:
        """The activation this kernel effectively uses: sign(x) (+1 at 0) times mean|x| per row."""
        beta = x.abs().mean(dim=1, keepdim=True)
        return torch.where(x >= 0, 1.0, -1.0) * beta

    @property
    def nbytes(self) -> int:
        """Bytes the sign words and scales hold."""
        return nbytes_of(self.wb, self.s)

    def _run(self, x):
        xn = x.numpy()
        m = xn.shape[0]
        if self.backend == "c":
            out = np.empty((m, self.n), np.float32)
            c_module().xnor(self.wb, self.s, xn, out, m, self.n, self.k, self.gwords, self.nb,
                            self.hw, torch.get_num_threads())
            return torch.from_numpy(out)
        xb = np.empty((m, self.wb.shape[1]), np.uint64)
        o = ops()
        o.pack_signs(xn, self.wb.shape[1], xb)
        beta = np.abs(xn).mean(axis=1, dtype=np.float32)
        out = np.empty((m, self.n), np.float32)
        gemm = o.xnor_gemm if m * self.wb.size > XNOR_PARALLEL_WORDS else o.xnor_gemm_serial
        gemm(self.wb, xb, self.s, beta, self.gwords, self.k, out)
        return torch.from_numpy(out)
