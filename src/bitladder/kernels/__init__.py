"""Low-bit CPU kernels for quantised Linear layers (see :mod:`bitladder.kernels.linear`)."""

from bitladder.kernels.linear import (
    KERNELS,
    DequantKernel,
    FbgemmW8A8Kernel,
    FbgemmW8A8TokenKernel,
    Fp16CodesKernel,
    Int4PackBf16Kernel,
    KernelUnsupported,
    LinearKernel,
    NumbaLowbitKernel,
    OnednnW8A8Kernel,
    OnednnW8A8TokenKernel,
    OrtNBitsFp32Kernel,
    OrtNBitsKernel,
    XnorKernel,
    reference_linear,
)
from bitladder.kernels.select import build_kernel, select_kernel

__all__ = [
    "KERNELS",
    "DequantKernel",
    "FbgemmW8A8Kernel",
    "FbgemmW8A8TokenKernel",
    "Fp16CodesKernel",
    "Int4PackBf16Kernel",
    "KernelUnsupported",
    "LinearKernel",
    "NumbaLowbitKernel",
    "OnednnW8A8Kernel",
    "OnednnW8A8TokenKernel",
    "OrtNBitsFp32Kernel",
    "OrtNBitsKernel",
    "XnorKernel",
    "build_kernel",
    "reference_linear",
    "select_kernel",
]
