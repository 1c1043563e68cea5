"""AWQ (Lin et al., 2023): activation-aware per-input-channel weight scaling.

Salient input channels (large mean |x|) are protected by scaling their weight columns up by
``s = mean|x|^alpha`` before rounding and the input down by ``1/s``; alpha is searched on a grid
for the smallest output error of the quantised layers on calibration rows. Layers that read one tensor
(q, k, v) can share one ``s``, searched on their summed output error, so that ``1/s`` folds into the layer
producing that tensor (:mod:`.fold`); otherwise ``1/s`` stays an explicit per-channel input multiplier of
the layer (``in_scale``), which works for any model. An activation-weighted clipping search follows.
"""

from __future__ import annotations

import torch

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.calibrate import SampleCollector
from bitladder.methods.quantize.clip import search_qparams
from bitladder.methods.quantize.fold import tied_mean
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor


def search_scale(rows: list[torch.Tensor], c: SampleCollector, fake_q, grid: int = 20,
                 tie: torch.Tensor | None = None) -> torch.Tensor:
    """The ``s`` (per input channel) shared by weight rows ``rows`` (each (C_i, K)) with the smallest output
    error after quantisation, each layer's mean squared error weighted by its share of the output channels.
    ``tie`` (input channel -> group) keeps ``s`` equal within each group (:func:`~.fold.tied_mean`)."""
    x = c.sample()
    refs = [x @ w.T for w in rows]
    share = [w.shape[0] / sum(r.shape[0] for r in rows) for w in rows]
    xm = tied_mean(c.mean_abs.clamp(min=1e-6), tie)
    best = (float("inf"), torch.ones_like(xm))
    for i in range(grid):
        s = xm.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        xs = x / s
        err = sum(float((xs @ fake_q(w * s).T - ref).pow(2).mean()) * f for w, ref, f in zip(rows, refs, share))
        if err < best[0]:
            best = (err, s)
    return best[1]


def clip_qparams(scaled: torch.Tensor, s: torch.Tensor, c: SampleCollector, config) -> tuple:
    """Activation-weighted clipping of scaled rows (C, K): the qparams with the smallest weighted error."""
    lay = Layout(config.layout(0).granularity, 0, config.layout(0).group)
    weight = lay.to_blocks((c.mean_sq / s.pow(2)).expand_as(scaled))
    return search_qparams(lay.to_blocks(scaled), get_qtype(config.qtype), config.symmetric,
                          SCALE_DTYPES[config.scale_dtype], weight=weight)


def awq_tensors(ws: list[torch.Tensor], axis: int, c: SampleCollector, config, method,
                tie: torch.Tensor | None = None) -> tuple[list[QuantizedTensor], torch.Tensor]:
    """AWQ for layers reading one input with one shared scale (any handler axis). Returns the tensors and
    the input multiplier ``1/s``."""
    by_channel = Layout("channel", axis)
    rows = [by_channel.rows(w.float()) for w in ws]

    def fake_q(r: torch.Tensor) -> torch.Tensor:
        return QuantizedTensor.from_float(r, config.qtype, config.layout(0), config.symmetric,
                                          config.scale_dtype).dequantize()

    s = search_scale(rows, c, fake_q, method.grid, tie)
    out = []
    for w, r in zip(ws, rows):
        scaled = r * s
        qp = clip_qparams(scaled, s, c, config) if method.clip_search else None
        out.append(QuantizedTensor.from_float(by_channel.unrows(scaled, tuple(w.shape)), config.qtype,
                                              config.layout(axis), config.symmetric, config.scale_dtype, qparams=qp))
    return out, 1.0 / s


def awq_tensor(w: torch.Tensor, axis: int, c: SampleCollector, config, method) -> tuple[QuantizedTensor, torch.Tensor]:
    """AWQ for one layer's weight (any handler axis). Returns the tensor and the input multiplier 1/s."""
    (qt,), inv = awq_tensors([w], axis, c, config, method)
    return qt, inv
