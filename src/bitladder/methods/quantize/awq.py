"""AWQ (Lin et al., 2023): activation-aware per-input-channel weight scaling.

Salient input channels (large mean |x|) are protected by scaling their weight columns up by
``s = mean|x|^alpha`` before rounding and the input down by ``1/s``; alpha is searched on a grid
for the smallest output error of the quantised layer on calibration rows. The ``1/s`` stays an
explicit per-channel input multiplier of the layer (``in_scale``), so any model works without
finding an op to fold it into. An activation-weighted clipping search follows.
"""

from __future__ import annotations

import torch

from bitladder.formats.layout import Layout
from bitladder.methods.quantize.calibrate import SampleCollector
from bitladder.methods.quantize.clip import search_qparams
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor


def awq_layer(w_rows: torch.Tensor, c: SampleCollector, config, fake_q, grid: int = 20,
              clip_search: bool = True) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """Best scale for weight rows (C, K). Returns (scaled rows, s, qparams or None)."""
    x = c.sample()
    ref = x @ w_rows.T
    xm = c.mean_abs.clamp(min=1e-6)
    best = (float("inf"), torch.ones_like(xm))
    for i in range(grid):
        alpha = i / grid
        s = xm.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = float(((x / s) @ fake_q(w_rows * s).T - ref).pow(2).mean())
        if err < best[0]:
            best = (err, s)
    s = best[1]
    scaled = w_rows * s
    qp = None
    if clip_search:
        lay = Layout(config.layout(0).granularity, 0, config.layout(0).group)
        weight = lay.to_blocks((c.mean_sq / s.pow(2)).expand_as(scaled))
        from bitladder.formats.qtypes import get_qtype

        qp = search_qparams(lay.to_blocks(scaled), get_qtype(config.qtype), config.symmetric,
                            SCALE_DTYPES[config.scale_dtype], weight=weight)
    return scaled, s, qp


def awq_tensor(w: torch.Tensor, axis: int, c: SampleCollector, config, method) -> tuple[QuantizedTensor, torch.Tensor]:
    """AWQ for one layer's weight (any handler axis). Returns the tensor and the input multiplier 1/s."""
    by_channel = Layout("channel", axis)
    rows = by_channel.rows(w.float())

    def fake_q(r: torch.Tensor) -> torch.Tensor:
        return QuantizedTensor.from_float(r, config.qtype, config.layout(0), config.symmetric,
                                          config.scale_dtype).dequantize()

    scaled, s, qp = awq_layer(rows, c, config, fake_q, method.grid, method.clip_search)
    full = by_channel.unrows(scaled, tuple(w.shape))
    qt = QuantizedTensor.from_float(full, config.qtype, config.layout(axis), config.symmetric, config.scale_dtype,
                                    qparams=qp)
    return qt, 1.0 / s
