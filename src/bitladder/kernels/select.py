"""Pick the fastest kernel for a Linear weight (placeholder rules; filled from measurements)."""

from __future__ import annotations

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QType, get_qtype


def select_kernel(qtype: QType | str, layout: Layout, m: int, n: int, k: int) -> str:
    return "dequant-fp32"


def build_kernel(qt, m: int = 1):
    from bitladder.kernels.linear import KERNELS

    return KERNELS[select_kernel(qt.qtype, qt.layout, m, *qt.shape)].from_qtensor(qt)
