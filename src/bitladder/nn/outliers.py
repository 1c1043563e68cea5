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

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.base import KernelCache


def side_weight(layer) -> torch.Tensor:
    """(out, k) float32: the stored weight's outlier columns times their input scale (memoised per weight)."""
    cache = layer._cache()
    if "outlier-side" not in cache:
        idx = layer.act_outliers
        n_in = layer.qweight.shape[layer.in_axis]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_in):
            raise BitladderError(f"outlier channel indices must lie in [0, {n_in}); got {idx.min()}..{idx.max()}")
        w = layer.qweight.dequantize(torch.float32).index_select(layer.in_axis, idx)
        cache["outlier-side"] = (w.T if layer.in_axis == 0 else w) * layer.outlier_scale
    return cache["outlier-side"]


def add_side(layer, x: torch.Tensor, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``y`` plus the float product of the input's outlier channels (last axis) with their weight columns;
    ``inplace``: into ``y`` itself, (M, N) and the caller's own (one fused call instead of a product and a sum)."""
    w = side_weight(layer)  # checks the indices first
    xs = x.index_select(-1, layer.act_outliers).to(y.dtype)
    if inplace:
        return y.addmm_(xs, w.to(y.dtype).T)
    return y + F.linear(xs, w.to(y.dtype))


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


def mask_free(layer):
    """``layer`` as an exporter may write it: where its input scale only zeroes its outlier channels (outliers
    without SmoothQuant) and its activations take a static grid, a copy with no input scale whose integer
    weight is zero on those columns; any other layer as itself. The outputs are the same (whatever those
    channels quantise to meets zero weights, and a static grid clamps it), and a runtime reads the input
    as it is instead of zeroing ``k`` channels in a pass of its own (a Mul per layer in ONNX)."""
    meta = layer.qmeta
    act = meta.get("act")
    if "outliers" not in meta or "in_scale" not in meta or act is None or act.get("dynamic"):
        return layer
    qt, idx = layer.qweight, layer.act_outliers
    rest = torch.ones_like(layer.in_scale, dtype=torch.bool).index_fill_(0, idx, False)
    if (qt.layout.granularity not in ("channel", "group") or qt.layout.axis != layer.weight_axis
            or len(qt.shape) != 2 or layer.in_axis != 1
            or bool(layer.in_scale[idx].any()) or not bool((layer.in_scale[rest] == 1).all())):
        return layer
    try:
        zeroed = qt.with_zero_columns(idx)
    except ValueError:
        return layer
    side = side_weight(layer)
    new = copy.deepcopy(layer)
    for part in qt.tensors():  # a sparse original becomes dense
        delattr(new, f"weight_{part}")
    for part, t in zeroed.tensors().items():
        new.register_buffer(f"weight_{part}", t)
    del new.in_scale
    new._qmeta.pop("in_scale")
    new.__dict__["_kernels"] = KernelCache()
    new._kernels["outlier-side"] = side  # the float path keeps the columns the integer path lost
    return new
