"""The run-time block-Hadamard rotation of a layer's input (``nn/rotated.py``) as butterflies, not a matmul.

``x @ blockdiag(H_b, ...)`` as a matmul costs ``b`` multiply-adds per element: at ``b = 64`` on MiniLM, half
the integer GEMMs' work (profiled: docs/DESIGN.md, 'Hadamard at run time').
The fast Walsh-Hadamard transform costs ``log2(b)`` additions per element. The C kernel
(``kernels/c/hadamard.c``, AVX2 or portable) and :func:`butterflies` (PyTorch, any dtype, differentiable) do
the same float operations in the same order, so a float32 result has the same bits whichever runs.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

from bitladder.errors import BitladderError
from bitladder.kernels.base import uint8_codes, uint8_grid
from bitladder.kernels.cpu import current

try:  # by its full name: the compiled module, not the package that imports this file
    _hadamard = importlib.import_module("bitladder.kernels._hadamard")
except ImportError:  # no compiler at install time
    _hadamard = None


def installed() -> bool:
    """Whether the C transform was built."""
    return _hadamard is not None


def _check(block: int, k: int) -> None:
    if block < 1 or block & (block - 1) or k % block:
        raise BitladderError(f"a Hadamard block must be a power of two dividing k (the last dimension, {k}); "
                             f"got {block}")


def _f32(v: float) -> float:
    """``v`` rounded to float32 (as a Python float): the constant the C code and the reference multiply by."""
    return float(np.float32(v))


def _norm(block: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(_f32(1.0 / math.sqrt(block)) if dtype == torch.float32 else 1.0 / math.sqrt(block),
                        dtype=dtype)


def butterflies(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x @ blockdiag(H_block) / sqrt(block)`` over the last dimension: stages at distance 1, 2, 4, ...,
    each ``(a + c, a - c)``, then one multiplication by ``1/sqrt(block)`` in ``x``'s dtype."""
    shape, k = x.shape, x.shape[-1]
    y = x.reshape(-1, k)
    h = 1
    while h < block:
        v = y.reshape(y.shape[0], k // (2 * h), 2, h)
        a, c = v[:, :, 0], v[:, :, 1]
        y = torch.stack((a + c, a - c), dim=2).reshape(y.shape[0], k)
        h *= 2
    return (y * _norm(block, y.dtype)).reshape(shape)


def fast_path(x: torch.Tensor) -> bool:
    """Whether the C kernel may take ``x``: a plain float32 CPU tensor (no fake or functional tensor of an
    export), no autograd, not traced or compiled."""
    return (_hadamard is not None and type(x) is torch.Tensor and x.dtype == torch.float32 and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled()) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


def fwht(x: torch.Tensor, block: int, simd: bool | None = None) -> torch.Tensor:
    """The C transform of float32 ``x`` (any shape, last dimension a multiple of ``block``); ``simd`` forces
    the AVX2 (True) or portable (False) path, else the CPU decides (``BITLADDER_CPU`` included)."""
    k = x.shape[-1]
    _check(block, k)
    xc = x.contiguous()
    y = torch.empty_like(xc)
    m = xc.numel() // max(k, 1)
    use_simd = current().has("avx2") if simd is None else bool(simd)
    _hadamard.fwht(xc.numpy(), y.numpy(), m, k, block, _f32(1.0 / math.sqrt(block)), int(use_simd),
                   torch.get_num_threads())
    return y


def static_codes(x: torch.Tensor, in_scale: torch.Tensor | None, bounds: tuple[float, float] | None, inv: float,
                 zp: int, split: bool, simd: bool, block: int = 1) -> torch.Tensor:
    """uint8 codes of ``x`` (M, K) float32 on a static grid in one C pass: ``x * in_scale``, rotated by
    :func:`butterflies` (``block`` > 1), clamped to ``bounds`` (lo, hi) where given, then
    ``quantize_per_tensor(., step, zp)``'s codes (``inv``: :func:`reciprocal` of ``step``); ``split``: (2M, K),
    the codes' low seven bits in the first M rows and their top bit in the others (``kernels/static_w8a8.py``).
    ``simd``: the AVX2 path (where the CPU has it)."""
    m, k = x.shape
    _check(block, k)
    q = torch.empty((2 * m if split else m, k), dtype=torch.uint8)
    s = _scale_array(in_scale, k)
    lo, hi = bounds if bounds is not None else (0.0, 0.0)
    _hadamard.static_codes(x.contiguous().numpy(), s, q.numpy(), m, k, block, _f32(1.0 / math.sqrt(block)), lo, hi,
                           bounds is not None, inv, zp, split, simd, torch.get_num_threads())
    return q


def reciprocal(step: float) -> float:
    """``quantize_per_tensor``'s multiplier for a grid step: the float32 reciprocal of the float32 step."""
    return float(np.float32(1.0) / np.float32(step))


_NO_SCALE = np.empty(0, np.float32)


def _scale_array(in_scale: torch.Tensor | None, k: int) -> np.ndarray:
    """An input scale as the C calls take it: K float32 values, or none (an empty array)."""
    if in_scale is None:
        return _NO_SCALE
    s = in_scale.detach().float().contiguous().reshape(-1).numpy()
    if s.size != k:
        raise BitladderError(f"an input scale has one value per input ({k}); got {s.size}")
    return s


def token_reference(x: torch.Tensor, block: int, levels: int,
                    in_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """(codes, scale, zero point, row scales (M, 1)) of the per-token grid (``kernels/onednn_w8a8.py``) on
    ``v = x * in_scale`` (or ``x``), rotated by ``butterflies(v, block)`` unless ``block`` is 1: each row divided
    by its largest magnitude ``r``, the rows' shared uint8 grid of ``levels`` steps, ``quantize_per_tensor``'s
    codes. The per-token kernel's tensor operations, which :func:`token_codes` does in C."""
    vn, r = rows_reference(x, block, in_scale)
    lo, hi = torch.aminmax(vn)  # each row's extremes over r: division by r > 0 keeps the order, rounding too
    scale, zp = uint8_grid(float(lo), float(hi), levels)
    return uint8_codes(vn, scale, zp), scale, zp, r


def token_codes(x: torch.Tensor, block: int, levels: int, in_scale: torch.Tensor | None = None,
                simd: bool | None = None) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """:func:`token_reference` in C with the same bits, for float32 ``x`` (M, K): one pass makes each row (scaled,
    rotated) in L1, finds its extremes and quantises it on the grid of [-1, 1]; a second makes the rows again
    only where their extremes make another grid (no float copy of the input is kept)."""
    k = x.shape[-1]
    _check(block, k)
    xc = x.contiguous()
    m = xc.numel() // max(k, 1)
    q = torch.empty(xc.shape, dtype=torch.uint8)
    r = torch.empty(m, 1)
    s = _scale_array(in_scale, k)
    use_simd = current().has("avx2") if simd is None else bool(simd)
    scale, zp = _hadamard.token_codes(xc.numpy(), s, q.numpy(), r.numpy(), m, k, block,
                                      _f32(1.0 / math.sqrt(block)), levels, int(use_simd), torch.get_num_threads())
    return q, scale, zp, r


def rows_reference(x: torch.Tensor, block: int,
                   in_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``y / r``, ``r`` (M, 1)) with ``y = x * in_scale`` (or ``x``), rotated by ``butterflies(y, block)`` unless
    ``block`` is 1, and ``r`` each row's largest magnitude, at least 1e-30: the per-token rows of
    ``kernels/fbgemm_w8a8.py``, in the operations :func:`fwht_rows` performs."""
    y = x if in_scale is None else x * in_scale
    if block > 1:
        y = butterflies(y.float(), block)
    # max(max, -min): faster than abs().amax() (docs/DESIGN.md, 'Per-token W8A8 on a per-tensor GEMM')
    r = torch.maximum(y.amax(dim=-1, keepdim=True), y.amin(dim=-1, keepdim=True).neg_()).clamp_(min=1e-30)
    return (y.div_(r) if y is not x else y / r), r


def fwht_rows(x: torch.Tensor, block: int, simd: bool | None = None,
              in_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rows_reference` in one C call over float32 ``x`` (M, K): scale, rotation, extremes and division per
    row while it sits in L1."""
    k = x.shape[-1]
    _check(block, k)
    xc = x.contiguous()
    m = xc.numel() // max(k, 1)
    y, r = torch.empty_like(xc), torch.empty(m, 1)
    s = _scale_array(in_scale, k)
    use_simd = current().has("avx2") if simd is None else bool(simd)
    _hadamard.fwht_rows(xc.numpy(), s, y.numpy(), r.numpy(), m, k, block, _f32(1.0 / math.sqrt(block)),
                        int(use_simd), torch.get_num_threads())
    return y, r
