"""Static W8A8 where the CPU's u8 x s8 pair sums cannot take the grid (no VNNI): ``static16`` in
``kernels/c/static16.h``.

A calibrated 8-bit activation grid against 8-bit weights saturates vpmaddubsw's 16-bit pair sums, so without
VNNI oneDNN runs it as two GEMMs (:class:`~bitladder.kernels.static_w8a8.OnednnStaticKernel`, ``split``). Here
the codes and the weights are widened to 16 bits and vpmaddwd adds each pair of products into 32 bits: exact,
in one GEMM, with as many multiply instructions per product as the whole u8 x s8 path. The layer's own codes
(the same C quantiser as oneDNN's path); :meth:`CStaticKernel.reference` is the arithmetic in PyTorch and both C
paths give its bits.
"""

from __future__ import annotations

import numpy as np
import torch

from bitladder.kernels import hadamard
from bitladder.kernels.base import KernelUnsupported, LinearKernel, as_x, nbytes_of, uint8_codes, weight_parts
from bitladder.kernels.c_lowbit import c_module, simd_path
from bitladder.kernels.fbgemm_w8a8 import int8_per_row
from bitladder.kernels.registry import register
from bitladder.kernels.static_w8a8 import _Static
from bitladder.tensor.quantized import QuantizedTensor

#: the C kernel's bound on K: 255 * 128 * K stays within int32
MAX_K = 65536


@register
class CStaticKernel(_Static, LinearKernel):
    """int8 per-channel weights x the layer's uint8 activation codes, 16-bit pair products (no split)."""

    name = "int8-w8a8-c-static"
    requires = ("avx2",)
    levels = 255  # the whole grid on every CPU
    auto_rows = None  # named by the static family (kernels.select.choose), never auto on its own
    adds_side = True  # :meth:`finish` takes a layer's outlier channels (nn/outliers.py) into its epilogue
    advice = ("without VNNI, exact 8-bit weights x 8-bit activations take two instructions per 32 products, "
              "fp32's rate, so this can at best tie fp32; 7-bit weights (rung int7-a8) keep the u8 x s8 pairs, "
              "which outrun fp32 where the layers are large enough for their arithmetic to dominate")

    @classmethod
    def installed(cls) -> bool:
        return c_module() is not None and hasattr(c_module(), "static16")

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return int8_per_row(qt) and qt.shape[1] <= MAX_K

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, simd: int | None = None) -> "CStaticKernel":
        """Repack once into columns of outputs (16 for the AVX-512 BW path, else 8); ``simd`` forces the
        AVX-512 (2), AVX2 (1) or portable (0) path."""
        if not cls.installed():
            raise KernelUnsupported("the C kernels were not built (no compiler when bitladder was installed)")
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout.granularity}: needs int8 symmetric per-channel or "
                                    f"per-tensor weights with at most {MAX_K} inputs")
        codes, scale, _, _ = weight_parts(qt, torch.int16)
        self = cls()
        self.n, self.k = qt.shape
        self.kp = self.k + self.k % 2
        self.simd = simd_path(simd, "avx512bw")
        self.lanes = 16 if self.simd == 2 else 8
        nc = -(-self.n // self.lanes)
        w = np.zeros((nc * self.lanes, self.kp), np.int8)
        w[: self.n, : self.k] = codes.numpy()
        # (column, lane, pair, j) -> (column, pair, lane, j)
        self.w = np.ascontiguousarray(w.reshape(nc, self.lanes, self.kp // 2, 2).transpose(0, 2, 1, 3))
        self._wscale = np.zeros(nc * self.lanes, np.float32)
        self._wscale[: self.n] = scale[:, 0].numpy()
        return self

    def bind(self, scale: float, zero_point: float, qtype: str):
        super().bind(scale, zero_point, qtype)
        step, _, _, _ = self._grid
        self._sc = (np.float32(step) * self._wscale).astype(np.float32)  # activation step x weight scale
        return self

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        """(uint8 codes, zero point): the layer's grid, quantised as the oneDNN path does; nothing of ``x`` itself
        (``nn.layers._shared_input`` keeps this on ``x``); :meth:`finish` reads the outlier channels' input from
        ``side``."""
        step, zp, _, _ = self._grid
        if hadamard.fast_path(x) and x.dim() == 2:
            return self._c_codes(x, in_scale, False), zp
        return uint8_codes(self._input(x, in_scale), step, zp).contiguous(), zp

    @property
    def rotates(self) -> bool:
        """Whether :meth:`prepare_rotated` runs here (the C transform was built)."""
        return hadamard.installed()

    def prepare_rotated(self, x: torch.Tensor, block: int) -> tuple:
        """:meth:`prepare` of ``x @ H`` (block-Hadamard), rotated and quantised in one pass."""
        return self._c_codes(x, None, False, block), self._grid[1]

    def finish(self, prep: tuple, bias: torch.Tensor | None, side: tuple | None = None) -> torch.Tensor:
        """(M, N) float32 of :meth:`prepare`'s codes; ``side``: (channels (k,) int64, weights (N, k) float32, the
        float input (M, K)), each channel of the input times its weight column added to every output, in channel
        order."""
        q, zp = prep
        m = q.shape[0]
        y = torch.empty((m, self.n), dtype=torch.float32)
        b = None if bias is None else self._padded(bias)
        extra = ()
        if side is not None and side[0].numel():
            extra = (as_x(side[2], self.k).numpy(), side[0].to(torch.int64).contiguous().numpy(),
                     self._columns(side[1]))
        c_module().static16(self.w, self._sc, b, q.numpy(), y.numpy(), m, self.n, self.k, self.kp, zp, self.simd,
                            self.lanes, torch.get_num_threads(), *extra)
        return y

    def _columns(self, side: torch.Tensor) -> np.ndarray:
        """Outlier weights (N, k) as (columns of outputs, k, lanes), kept while it is the same tensor."""
        if getattr(self, "_side", (None,))[0] is not side:
            nc = self.w.shape[0]
            s = np.zeros((nc * self.lanes, side.shape[1]), np.float32)
            s[: self.n] = side.detach().float().numpy()
            self._side = (side, np.ascontiguousarray(s.reshape(nc, self.lanes, -1).transpose(0, 2, 1)))
        return self._side[1]

    def _padded(self, bias: torch.Tensor) -> np.ndarray:
        """The bias padded to whole columns of eight outputs (kept while it is the same, unchanged tensor)."""
        key = (bias.data_ptr(), bias._version if not bias.is_inference() else -1)
        if getattr(self, "_bias", (None,))[0] != key:
            b = np.zeros(len(self._sc), np.float32)
            b[: self.n] = bias.detach().float().numpy()
            self._bias = (key, b)
        return self._bias[1]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.prepare(x, None), None)

    def _fused(self, x, bias, in_scale):
        return self.finish(self.prepare(x, in_scale), bias)

    def reference(self, q: torch.Tensor, zp: int, bias: torch.Tensor | None = None, x: torch.Tensor | None = None,
                  side: tuple | None = None) -> torch.Tensor:
        """The kernel's arithmetic on codes ``q`` (and ``side`` on ``x``) in PyTorch (the C paths give these bits)."""
        nc = self.w.shape[0]
        w = torch.from_numpy(self.w.astype(np.int64)).permute(0, 2, 1, 3).reshape(nc * self.lanes, self.kp)
        w = w[: self.n, : self.k]
        acc = (q.to(torch.int64) - zp) @ w.T
        y = acc.to(torch.float32) * torch.from_numpy(self._sc[: self.n])
        y = y if bias is None else y + bias.float()
        if side is not None:
            for j, c in enumerate(side[0].tolist()):  # channel by channel, a multiply and an add each
                y = y + x[:, c: c + 1].float() * side[1][:, j].float()
        return y

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.w, self._wscale)
