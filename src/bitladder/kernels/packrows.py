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


def panels(cols: np.ndarray, tn: int) -> np.ndarray:
    """(columns, bytes) of column-major 32-byte vectors -> the same bytes, flat, in panels of ``tn`` columns: vector
    kv of a panel's column t at (kv * width + t) * 32 (the last panel's width is what is left), so a register tile
    reads one stream (the tiles' columns of eight outputs in kernels/c/lowbit.c, the lookup kernels' tiles of 32
    rows in kernels/c/binlut.c)."""
    c, cb = cols.shape
    full = c // tn * tn
    v = cols.reshape(c, cb // 32, 32)
    head = v[:full].reshape(full // tn, tn, cb // 32, 32).transpose(0, 2, 1, 3).reshape(-1)
    return np.concatenate([head, v[full:].transpose(1, 0, 2).reshape(-1)])


def columns(w: np.ndarray, tn: int) -> np.ndarray:
    """The inverse of :func:`panels` for an (nc, bytes) array: one row a column again."""
    nc, cb = w.shape
    full, flat = nc // tn * tn, w.reshape(-1)
    head = flat[: full * cb].reshape(full // tn, cb // 32, tn, 32).transpose(0, 2, 1, 3).reshape(full, cb)
    tail = flat[full * cb:].reshape(cb // 32, nc - full, 32).transpose(1, 0, 2).reshape(nc - full, cb)
    return np.concatenate([head, tail])
