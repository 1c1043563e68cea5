"""HQQ (Badri & Shaji, 2023): data-free, optimises each group's zero point so that the rounding
error is sparse, with a half-quadratic solver on an l_p (p < 1) loss.

Codes are unsigned, the scale is the round-to-nearest scale, and the fractional zero point is stored as
fp16 (16 bits per group). Alternating steps: shrink the residual ``W - dequant(W_q)`` with a
generalised soft threshold, then set the zero point to the mean that explains the rest. Of the
iterates, each group keeps the zero point with the smallest *squared* error (HQQ keeps the last
or the smallest mean absolute error): the l_p steps propose, the l_2 error decides, so the result is
never worse than the round-to-nearest starting point (HQQ starts from min-max; see the comment).
"""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import QType
from bitladder.formats.quant import choose_qparams


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * x.abs().clamp(min=1e-8).pow(p - 1))


def hqq_blocks(xb: torch.Tensor, qtype: QType, iters: int = 20, p: float = 0.7, beta: float = 10.0,
               kappa: float = 1.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scale (C, nb, 1) and float zero point (C, nb, 1) for the block view ``xb``."""
    x = xb.float()
    # start from the round-to-nearest point (zero-inclusive range, integer zero point): with heavy
    # tails, a min-max grid that misses zero costs more than the solver recovers in 20 steps
    scale, z = choose_qparams(x, qtype, symmetric=False, scale_dtype=torch.float16)
    z = z.float()
    best_err, best_z = torch.full_like(z, float("inf")), z.clone()
    for _ in range(iters):
        q = torch.clamp(torch.round(x / scale + z), qtype.qmin, qtype.qmax)
        z16 = z.to(torch.float16).float()
        err = ((q - z16) * scale - x).pow(2).sum(-1, keepdim=True)
        better = err < best_err
        best_err, best_z = torch.where(better, err, best_err), torch.where(better, z, best_z)
        residual = _shrink(x - (q - z) * scale, beta, p)
        z = (q - (x - residual) / scale).mean(-1, keepdim=True)
        beta *= kappa
    z = best_z.to(torch.float16).float()
    q = torch.clamp(torch.round(x / scale + z), qtype.qmin, qtype.qmax)
    return q.to(torch.int32), scale, z
