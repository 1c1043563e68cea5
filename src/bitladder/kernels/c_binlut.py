"""The C binary-weight GEMV by table lookup (``kernels/c/binlut.c``): 1-bit codes against int8 activations
quantised per block at each call, the grid of :mod:`bitladder.kernels.c_lowbit`. Every four activations give a
table of their sixteen subset sums, and each nibble of four weight bits looks its partial dot up (vpshufb),
so no bit plane is expanded: the bit-plane GEMV is compute-bound on binary weights at about a third of the
read bandwidth, this one reaches about two thirds (docs/results/bench-linear-vnni.json). The integer dots are
exact on any AVX2 CPU; AVX-512 BW CPUs run two tiles of rows per register.

Two-bit codes (int2, uint2 with zero points, ternary: :class:`CTwoBitLutKernel`) are two bit planes looked up in
the same tables, u = b0 + 2 b1: the expanding GEMV spends four instructions per 32 two-bit codes and is
compute-bound at one row; two lookups per plane replace them.

Built by pip at install (``setup.py``) where a compiler exists; :meth:`CBinaryLutKernel.reference` is the
same arithmetic in PyTorch, and the portable C path gives the same bits.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

from bitladder.kernels.base import ANY_ROWS, KernelUnsupported, LinearKernel, group_of, nbytes_of, weight_parts
from bitladder.kernels.c_lowbit import CLowbitKernel, int8_blocks, simd_path
from bitladder.kernels.cpu import Cpu
from bitladder.kernels.onnx_nbits import integer_codes
from bitladder.kernels.packrows import columns, panels
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

try:  # by its full name: the compiled module, not the package that imports this file
    _binlut = importlib.import_module("bitladder.kernels._binlut")
except ImportError:  # no compiler at install time
    _binlut = None

TILE = 32  # rows per tile: one byte lane each in a 256-bit register


@register
class CBinaryLutKernel(LinearKernel):
    """Binary (1-bit) codes x int8 activations per block of up to 128 inputs, by 16-entry table lookups."""

    name = "c-binary-lut"
    # with VNNI, a sentence of tokens; the batch GEMM (c-lowbit-tiles, same grid) is ahead above on most shapes.
    # Without VNNI the tiles' binary path (eight u8 x s8 multiplies per 32 codes) stays behind the lookups at
    # every batch timed, so they keep every row count there (docs/results/notes.md, 'One activation grid')
    auto_rows = (1, 32)
    no_vnni_rows = ANY_ROWS
    rank = 4  # ahead of the bit-plane GEMV (c-lowbit-a8, rank 5) for the weights it takes
    planes = 1  # bits per code

    @classmethod
    def installed(cls) -> bool:
        return _binlut is not None

    @classmethod
    def rows(cls, cpu: Cpu, qt=None):
        if not cpu.has("avx2"):
            return None  # the portable path is for correctness, not speed
        return cls.auto_rows if cpu.has("avx512_vnni") else cls.no_vnni_rows

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        g = group_of(qt)
        return (integer_codes(qt) and qt.qtype.rules.width(qt.qtype) == cls.planes
                and (qt.zero_point is None or cls.planes == 2) and (g is None or g % 32 == 0))

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, simd: int | None = None) -> "CBinaryLutKernel":
        """Repack once into tiles of 32 rows; ``simd`` forces the AVX-512 BW (2), AVX2 (1 or True) or portable
        (0 or False) path (each falls back to the next where the host lacks it), else the CPU decides."""
        if not cls.installed():
            raise KernelUnsupported("the C kernels were not built (no compiler when bitladder was installed)")
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout.granularity}: needs {cls.planes}-bit codes"
                                    f"{'' if cls.planes == 2 else ' without zero points'} and groups that are "
                                    "multiples of 32")
        _, scale, zp, g = weight_parts(qt, None)
        n, k = qt.shape
        if scale.shape[1] == 1:
            kp = g = -(-k // 32) * 32
        else:
            kp = -(-k // g) * g
        self = cls()
        self.n, self.k, self.kp, self.g = n, k, kp, g
        self.xb = math.gcd(g, 128)
        self.tiles = -(-n // TILE)
        npad = self.tiles * TILE
        u = np.zeros((npad, kp), np.uint8)
        u[:n, :k] = qt.unsigned_codes().reshape(n, k).numpy()
        # per tile, column of eight codes and bit plane: one byte a row (kernels/c/binlut.c)
        planes = [np.packbits(((u >> p) & 1).reshape(npad, kp // 8, 8), axis=-1, bitorder="little")[..., 0]
                  for p in range(self.planes)]
        bytes_ = np.stack(planes, axis=-1).reshape(self.tiles, TILE, kp // 8, self.planes)
        self.simd = simd_path(simd, "avx512bw")
        # tiles in panels of the width of the path C runs for it here (two with AVX-512 BW: one stream a pair)
        self.tn = _binlut.panel_tiles(self.simd)
        self.w = panels(np.ascontiguousarray(bytes_.transpose(0, 2, 3, 1)).reshape(self.tiles, -1), self.tn)
        nbw = kp // g
        ws = np.zeros((npad, nbw), np.float16)
        ws[:n, : scale.shape[1]] = scale.numpy()
        self.ws = np.ascontiguousarray(ws.reshape(self.tiles, TILE, nbw).transpose(0, 2, 1))
        mult, off = qt.qtype.rules.affine(qt.qtype)
        self.mult, self.off, self.zo = int(mult), int(off), None
        if zp is not None:  # an offset per row and group, laid out as the scales: zero point + off
            offsets = zp + self.off
            if int(offsets.min()) < 0 or int(offsets.max()) > 255:
                raise KernelUnsupported(f"{qt.qtype.name}: zero points outside one unsigned byte")
            zo = np.zeros((npad, nbw), np.uint8)
            zo[:n, : zp.shape[1]] = offsets.numpy()
            self.zo, self.off = np.ascontiguousarray(zo.reshape(self.tiles, TILE, nbw).transpose(0, 2, 1)), 0
        return self

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.w, self.ws, self.zo)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(x.shape[0], self.tiles * TILE)
        _binlut.gemv(self.w, self.ws, x.numpy(), y.numpy(), x.shape[0], self.tiles, self.k, self.kp, self.g,
                     self.xb, self.mult, self.off, self.simd, torch.get_num_threads(), self.planes, self.zo)
        return y if y.shape[1] == self.n else y[:, : self.n].contiguous()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's arithmetic in PyTorch, step for step (the C paths must give these bits)."""
        xq, s = int8_blocks(x, self.kp, self.xb)
        npad = self.tiles * TILE
        w = columns(self.w.reshape(self.tiles, -1), self.tn).reshape(self.tiles, self.kp // 8, self.planes, TILE)
        u = 0
        for p in range(self.planes):  # (tiles, columns, planes, rows) -> plane p's bits of every row
            bits = np.unpackbits(w[:, :, p].transpose(0, 2, 1).reshape(npad, -1), axis=-1, bitorder="little")
            u = u + (torch.from_numpy(bits.astype(np.int64)) << p)
        u = u.view(npad, -1, self.xb)
        nbw = self.kp // self.g
        gw = torch.arange(self.kp // self.xb) * self.xb // self.g
        off = self.off
        if self.zo is not None:  # (tiles, groups, rows) -> each row's offset for each activation block
            off = torch.from_numpy(self.zo.transpose(0, 2, 1).reshape(npad, nbw).astype(np.int64))[:, gw][None]
        d = self.mult * torch.einsum("nbk,mbk->mnb", u, xq) - off * xq.sum(-1)[:, None, :]
        ws = torch.from_numpy(self.ws.transpose(0, 2, 1).reshape(npad, nbw).astype(np.float32))
        y = torch.zeros(x.shape[0], npad)
        for b in range(d.shape[-1]):  # block by block, in order, as both C paths add them
            y = y + d[..., b].to(torch.float32) * (ws[:, gw[b]][None] * s[:, b])
        return y[:, : self.n]


@register
class CTwoBitLutKernel(CBinaryLutKernel):
    """Two-bit codes (int2, uint2 with integer zero points, ternary) x int8 activations: both bit planes by table
    lookup."""

    name = "c-2bit-lut"
    planes = 2
    # the same int8 activation grid as c-lowbit-tiles, which is faster from four rows (docs/DESIGN.md, 'One grid')
    auto_rows = no_vnni_rows = (1, 3)
