"""Binary codes -1/+1 (signs, one bit each) with an absmean scale (XNOR-Net)."""

from __future__ import annotations

import torch

from bitladder.formats.kinds.base import Kind, kind


@kind("binary")
class Binary(Kind):
    """Zero has no code, so exact zeros cannot be stored sparsely."""

    sparse_ok = False

    def qparams(self, x, qtype, symmetric):
        return x.abs().mean(dim=-1, keepdim=True), False

    def quantize(self, x, scale, zero_point, qtype):
        return torch.where(x.float() / scale >= 0, 1, -1).to(torch.int8), 0

    def to_unsigned(self, q, qtype):
        return ((q.to(torch.int16) + 1) // 2).to(torch.uint8)

    def from_unsigned(self, u, qtype):
        return u.to(torch.int8) * 2 - 1

    def affine(self, qtype) -> tuple[int, int]:
        return 2, 1

    def levels(self, qtype) -> int:
        return 2
