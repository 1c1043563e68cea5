"""The data-free weight of a layer: round to nearest (with a clip search if asked), HQQ, or k-means."""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.clip import search_qparams
from bitladder.methods.quantize.configs import Codebook, QuantConfig
from bitladder.methods.quantize.methods import HQQ
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor


def data_free_name(config: QuantConfig) -> str:
    """The name a data-free weight's method is recorded under."""
    if isinstance(config, Codebook):
        return "kmeans"
    return "hqq" if isinstance(getattr(config, "method", None), HQQ) else "rtn"


def rtn_tensor(w: torch.Tensor, config: QuantConfig, axis: int) -> QuantizedTensor:
    """The data-free weight of a layer: round to nearest (with clip search if asked), or HQQ."""
    layout = config.layout(axis)
    method = getattr(config, "method", None)
    if isinstance(config, Codebook):
        from bitladder.methods.quantize.codebook import codebook_tensor

        return codebook_tensor(w, config.bits, layout, config.iters)
    if isinstance(method, HQQ):
        from bitladder.methods.quantize.hqq import hqq_blocks

        qtype = get_qtype(config.qtype)
        q, s, z = hqq_blocks(layout.to_blocks(w), qtype, method.iters, method.lp, method.beta, method.kappa)
        return QuantizedTensor.from_codes(q, s, z, qtype, tuple(w.shape), layout, config.scale_dtype)
    if getattr(method, "clip_search", False) and get_qtype(config.qtype).rules.range_scaled:
        xb = layout.to_blocks(w)
        qp = search_qparams(xb, get_qtype(config.qtype), config.symmetric, SCALE_DTYPES[config.scale_dtype])
        return QuantizedTensor.from_float(w, config.qtype, layout, config.symmetric, config.scale_dtype, qparams=qp)
    return QuantizedTensor.from_float(w, config.qtype, layout, config.symmetric, config.scale_dtype)
