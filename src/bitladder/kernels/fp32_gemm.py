"""The fp32 GEMM a dequantising kernel hands its weight to: torch's own (MKL) or oneDNN's, by CPU.

MKL takes its tuned code paths only on Intel CPUs; elsewhere it runs a generic one (MKL_VERBOSE names it),
AVX-512 or not. oneDNN's JIT GEMM uses the CPU's widest vectors on any vendor, and torch ships both. So on a
non-Intel CPU with AVX2 the weight goes to oneDNN, exact fp32 either way (only the summation order differs);
on Intel, and without AVX2, torch's default stays. Figures: docs/DESIGN.md, 'The fp32 GEMM follows the CPU'.
Chosen when a kernel is built (a field, like its activation grid), never per call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bitladder.kernels.cpu import Cpu


def _primitive(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


#: small products keep torch's path: oneDNN's primitive has a fixed cost per call that exceeds MKL's whole product on
#: a small weight at a few rows (measured: docs/DESIGN.md, 'The fp32 GEMM follows the CPU'). Either bound reached takes
#: oneDNN.
ONEDNN_MIN_MACS = 1 << 23
ONEDNN_MIN_WEIGHT = 1 << 19


def _onednn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # oneDNN's primitive has no autograd formula and takes fp32 only, and a user may switch oneDNN off
    # (torch.backends.mkldnn.flags): anything else keeps torch's path
    if (w.numel() < ONEDNN_MIN_WEIGHT and x.numel() * w.shape[0] < ONEDNN_MIN_MACS) or (
            x.dtype is not torch.float32 or w.dtype is not torch.float32 or not torch.backends.mkldnn.enabled) or (
            torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                         or (bias is not None and bias.requires_grad))):
        return F.linear(x, w, bias)
    return _primitive(x, w, bias)


#: engine name -> ``linear(x, w, bias)``; results files name the engine a host selects
ENGINES: dict[str, Callable] = {"torch": F.linear, "onednn": _onednn}


def onednn_installed() -> bool:
    """Whether this torch carries oneDNN's fp32 linear primitive."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def installed() -> list[str]:
    """The engines this torch can run."""
    return [name for name in ENGINES if name != "onednn" or onednn_installed()]


def engine(cpu: Cpu) -> str:
    """The fp32 GEMM for dequantised weights on ``cpu`` (as ``BITLADDER_CPU`` presents it)."""
    if cpu.has("avx2") and cpu.vendor not in ("GenuineIntel", "") and onednn_installed():
        return "onednn"
    return "torch"


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, name: str = "torch") -> torch.Tensor:
    """``F.linear`` through engine ``name`` (see :data:`ENGINES`)."""
    return ENGINES[name](x, w, bias)
