"""Outlier input channels kept in float beside a static integer GEMM.

A per-tensor activation grid is as coarse as the widest input channel makes it; in a transformer a few
channels (the same ones from batch to batch) are tens of times wider than the rest. With ``Act(outliers=k)``
the ``k`` channels of widest calibrated range leave the integer path: the layer's input scale is zero there,
so those channels quantise to the zero point and contribute nothing to the GEMM, and a float product of the
same ``k`` input columns with the same stored weight columns (times their own input scale) is added to the
output (QUIK, Ashkboos et al. 2023: outlier columns chosen on calibration data; LLM.int8()'s decomposition,
Dettmers et al. 2022, chooses them per call). The weight stays one int8 tensor; the layer adds ``k`` indices
and ``k`` scales, and ``k`` x ``out`` multiply-adds per row in float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.base import KernelCache


def side_weight(layer) -> torch.Tensor:
    """(out, k) float32: the stored weight's outlier columns times their input scale (memoised per weight)."""
    cache = layer.__dict__.setdefault("_kernels", KernelCache())
    if "outlier-side" not in cache:
        idx = layer.act_outliers
        n_in = layer.qweight.shape[layer.in_axis]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_in):
            raise BitladderError(f"outlier channel indices must lie in [0, {n_in}); got {idx.min()}..{idx.max()}")
        w = layer.qweight.dequantize(torch.float32).index_select(layer.in_axis, idx)
        cache["outlier-side"] = (w.T if layer.in_axis == 0 else w) * layer.outlier_scale
    return cache["outlier-side"]


def add_side(layer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` plus the float product of the input's outlier channels (last axis) with their weight columns."""
    w = side_weight(layer)  # checks the indices first
    return y + F.linear(x.index_select(-1, layer.act_outliers).to(y.dtype), w.to(y.dtype))


class OutlierLinear(nn.Linear):
    """The float form of a Linear with outlier channels (ONNX export traces it): ``weight`` is the integer
    path's (zero on the outlier columns, its input scale applied to the input by the exporter), and ``side``
    the outlier columns' float weight, read by a Gather of those input channels."""

    def __init__(self, in_features: int, out_features: int, bias: bool, outliers: torch.Tensor,
                 side: torch.Tensor) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("outliers", outliers.clone())
        self.side = nn.Parameter(side.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(x.index_select(-1, self.outliers), self.side)
