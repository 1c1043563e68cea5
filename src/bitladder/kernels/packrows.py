"""Row packing in numpy (kernel construction only; never on the per-call path)."""

from __future__ import annotations

import numpy as np


def pack_rows(u: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes along the last axis at ``bits`` in {1, 2, 4, 8}, low bits first.

    The last axis is zero-padded to a whole number of bytes; the result has the same leading axes.
    """
    per = 8 // bits
    u = np.asarray(u).astype(np.uint8, copy=False)  # no copy of codes that are already bytes
    pad = (-u.shape[-1]) % per
    if pad:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], pad), np.uint8)], axis=-1)
    if per == 1:
        return np.ascontiguousarray(u)
    u = u.reshape(*u.shape[:-1], -1, per)
    out = np.zeros(u.shape[:-1], np.uint8)
    for i in range(per):
        out |= u[..., i] << np.uint8(bits * i)
    return out
