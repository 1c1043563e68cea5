"""Low-bit CPU kernels: each module registers its kernels (see :mod:`bitladder.kernels.registry`);
:mod:`bitladder.kernels.select` chooses among them by the weight, the row count and the CPU."""

from bitladder.kernels.base import DequantKernel, KernelUnsupported, LinearKernel, reference_linear
from bitladder.kernels.bf16_fp32 import Bf16Fp16Kernel, Bf16Kernel, Fp8GemvKernel, Fp16GemvKernel
from bitladder.kernels.cast_conv import CastConv2d
from bitladder.kernels.c_binlut import CBinaryLutKernel, CTwoBitLutKernel
from bitladder.kernels.c_lowbit import CLowbitKernel
from bitladder.kernels.c_static import CStaticKernel
from bitladder.kernels.c_tiles import CTilesKernel
from bitladder.kernels.dequant_conv import DequantConv2d
from bitladder.kernels.fbgemm_w8a8 import FbgemmW8A8Kernel, FbgemmW8A8TokenKernel
from bitladder.kernels.fp16_codes import Fp16CodesKernel
from bitladder.kernels.int4pack import Int4PackBf16Kernel
from bitladder.kernels.numba_dequant import NumbaDequantKernel
from bitladder.kernels.numba_kernels import NumbaLowbitKernel, XnorKernel
from bitladder.kernels.onednn_conv import OnednnConv2dW8A8
from bitladder.kernels.onednn_split import OnednnSplitKernel
from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel, OnednnW8A8TokenKernel
from bitladder.kernels.onnx_nbits import OrtNBitsFp32Kernel, OrtNBitsKernel
from bitladder.kernels.registry import KERNELS
from bitladder.kernels.static_conv import OnednnConv2dStatic
from bitladder.kernels.static_w8a8 import FbgemmStaticKernel, OnednnStaticKernel
from bitladder.kernels.select import build_kernel, choose

__all__ = [
    "KERNELS",
    "Bf16Fp16Kernel",
    "Bf16Kernel",
    "CBinaryLutKernel",
    "CastConv2d",
    "CTwoBitLutKernel",
    "CLowbitKernel",
    "CStaticKernel",
    "CTilesKernel",
    "DequantConv2d",
    "DequantKernel",
    "FbgemmStaticKernel",
    "FbgemmW8A8Kernel",
    "FbgemmW8A8TokenKernel",
    "Fp8GemvKernel",
    "Fp16CodesKernel",
    "Fp16GemvKernel",
    "Int4PackBf16Kernel",
    "KernelUnsupported",
    "LinearKernel",
    "NumbaDequantKernel",
    "NumbaLowbitKernel",
    "OnednnConv2dStatic",
    "OnednnConv2dW8A8",
    "OnednnSplitKernel",
    "OnednnStaticKernel",
    "OnednnW8A8Kernel",
    "OnednnW8A8TokenKernel",
    "OrtNBitsFp32Kernel",
    "OrtNBitsKernel",
    "XnorKernel",
    "build_kernel",
    "choose",
    "reference_linear",
]
