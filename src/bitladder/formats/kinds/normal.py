"""NormalFloat (NF4, QLoRA): 4-bit codes index 16 fixed levels in [-1, 1], the quantiles of a standard
normal distribution, times an absmax scale per block. Levels sit where normally distributed weights are
dense, so each code carries about equal probability mass (Dettmers et al. 2023, section 3)."""

from __future__ import annotations

import torch

from bitladder.formats.kinds.base import Kind, QType, absmax, kind

# 8 positive and 7 negative quantiles of N(0, 1) between 0.5 and this probability, plus an exact 0
_OFFSET = 0.9677083


def levels(bits: int = 4) -> torch.Tensor:
    """The 2**bits NormalFloat levels, ascending, with -1, 0 and 1 exact."""
    half = 2 ** (bits - 1)
    pos = torch.special.ndtri(torch.linspace(_OFFSET, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(_OFFSET, 0.5, half, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (v / v.abs().max()).float()


@kind("normal")
class Normal(Kind):
    """Codes 0..2**bits-1 (stored unsigned) into the level table; no integer kernel applies."""

    integer_codes = False  # a table of levels, not scale x code
    sparse_ok = False  # code 0 is the level -1, not zero: a sparse fill would decode wrong
    onnx = None

    def __init__(self) -> None:
        self._levels: dict[int, torch.Tensor] = {}

    def table(self, qtype: QType) -> torch.Tensor:
        """The level table of this format's width."""
        bits = int(qtype.bits)
        if bits not in self._levels:
            self._levels[bits] = levels(bits)
        return self._levels[bits]

    def qparams(self, x, qtype, symmetric):
        return absmax(x, 1.0), False

    def quantize(self, x, scale, zero_point, qtype):
        v = (x.float() / scale).unsqueeze(-1)
        return (v - self.table(qtype)).abs().argmin(dim=-1).to(torch.int32), 0

    def decode(self, q, qtype):
        return self.table(qtype)[q.long()]
