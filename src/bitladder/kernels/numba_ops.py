"""Numba compute loops for low-bit Linear layers (no C extension: LLVM compiles them on first use).

Every loop is ``cache=True`` (compiled once per machine, then loaded from ``__pycache__``) and
``fastmath`` (reassociation lets LLVM vectorise the float reductions). ``HAVE_NUMBA`` is False
when numba is not installed; the kernels in :mod:`bitladder.kernels.numba_kernels` then report
themselves unavailable and the selection falls back.

Weight planes are the packed bytes of one bit width ``b`` in {1, 2, 4, 8}, one padded row per
output channel, element ``k`` in bits ``[b*(k % p), b*(k % p) + b)`` of byte ``k // p`` (``p = 8/b``:
the FORMATS.md bit stream, rows padded to whole groups). The activation is handed over
de-interleaved into ``p`` lanes, ``X[m, i, j] = x[m, p*j + i]``, so that the lane ``i`` of every
byte multiplies a contiguous slice of ``X``: the inner loop is a plain vectorisable reduction
(``vpmovzxbd`` + ``vpand``/``vpsrld`` + ``vcvtdq2ps`` + ``vfmadd``).
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is optional: without it the numba kernels are simply unavailable
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
    # numba's OpenMP layer is a second OpenMP runtime next to torch's, and the two pools spin against
    # each other, several times slower than workqueue (measured: docs/DESIGN.md, 'Kernels').
    # Unless the user chose a layer, use the non-spinning workqueue pool.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[misc]
        def wrap(f):
            return f

        return wrap if not (len(args) == 1 and callable(args[0])) else args[0]

    prange = range  # type: ignore[assignment]


# ---- weight-only GEMV, one plane width each: out[m, n] += mult * sum_g s[n, g] * sum_{k in g} u x ----
# Written as `for j in range(h)` with `g * h + j` indexing and a constant-trip lane loop: the
# equivalent `range(g * h, g * h + h)` form with hand-split lanes is much slower: LLVM leaves it
# scalar (measured: docs/DESIGN.md, 'Kernels').
@njit(parallel=True, fastmath=True, cache=True)
def gemv_b8(w, x, s, mult, gsz, out):  # pragma: no cover - compiled
    """8-bit plane: ``out[m, n] += mult * sum_g s[n, g] * sum_{k in g} w[n, k] * x[m, k]`` (``x`` not split)."""
    n_out = w.shape[0]
    m_in = x.shape[0]
    nb = s.shape[1]
    for n in prange(n_out):
        for m in range(m_in):
            tot = np.float32(0.0)
            for g in range(nb):
                acc = np.float32(0.0)
                for j in range(gsz):
                    acc += np.float32(w[n, g * gsz + j]) * x[m, g * gsz + j]
                tot += s[n, g] * acc
            out[m, n] += mult * tot


@njit(parallel=True, fastmath=True, cache=True)
def gemv_b4(w, xl, s, mult, gsz, out):  # pragma: no cover - compiled
    """4-bit plane, ``xl`` de-interleaved into two lanes (low nibble first), accumulated into ``out``."""
    n_out = w.shape[0]
    m_in = xl.shape[0]
    nb = s.shape[1]
    h = gsz // 2
    for n in prange(n_out):
        for m in range(m_in):
            tot = np.float32(0.0)
            for g in range(nb):
                acc = np.float32(0.0)
                for j in range(h):
                    b = w[n, g * h + j]
                    for i in range(2):
                        acc += np.float32(np.int32((b >> (4 * i)) & 15)) * xl[m, i, g * h + j]
                tot += s[n, g] * acc
            out[m, n] += mult * tot


@njit(parallel=True, fastmath=True, cache=True)
def gemv_b2(w, xl, s, mult, gsz, out):  # pragma: no cover - compiled
    """2-bit plane, ``xl`` de-interleaved into four lanes, accumulated into ``out``."""
    n_out = w.shape[0]
    m_in = xl.shape[0]
    nb = s.shape[1]
    h = gsz // 4
    for n in prange(n_out):
        for m in range(m_in):
            tot = np.float32(0.0)
            for g in range(nb):
                acc = np.float32(0.0)
                for j in range(h):
                    b = w[n, g * h + j]
                    for i in range(4):
                        acc += np.float32(np.int32((b >> (2 * i)) & 3)) * xl[m, i, g * h + j]
                tot += s[n, g] * acc
            out[m, n] += mult * tot


@njit(parallel=True, fastmath=True, cache=True)
def gemv_b1(w, xl, s, mult, gsz, out):  # pragma: no cover - compiled
    """Sign-add: a set bit adds ``x``, a clear one nothing (the -1 part is folded into the offset)."""
    n_out = w.shape[0]
    m_in = xl.shape[0]
    nb = s.shape[1]
    h = gsz // 8
    for n in prange(n_out):
        for m in range(m_in):
            tot = np.float32(0.0)
            for g in range(nb):
                acc = np.float32(0.0)
                for j in range(h):
                    b = w[n, g * h + j]
                    for i in range(8):
                        acc += np.float32(np.int32((b >> i) & 1)) * xl[m, i, g * h + j]
                tot += s[n, g] * acc
            out[m, n] += mult * tot


GEMV = {8: gemv_b8, 4: gemv_b4, 2: gemv_b2, 1: gemv_b1}


# ---- dequantise a block of rows to fp32 (for batched inputs: tile + BLAS matmul) ----------------
@njit(parallel=True, fastmath=True, cache=True)
def dequant_rows(w, bits, mult, n0, n1, tile, first):  # pragma: no cover - compiled
    """tile[r, k] (=|+=) mult * u[n0 + r, k] for one plane; k over the padded row."""
    per = 8 // bits
    mask = (1 << bits) - 1
    nbytes = w.shape[1]
    for r in prange(n1 - n0):
        wr = w[n0 + r]
        tr = tile[r]
        for i in range(per):
            sh = bits * i
            for j in range(nbytes):
                v = mult * np.float32(np.int32((np.int32(wr[j]) >> sh) & mask))
                if first:
                    tr[j * per + i] = v
                else:
                    tr[j * per + i] += v


@njit(parallel=True, fastmath=True, cache=True)
def scale_rows(tile, s, so, n0, n1, gsz):  # pragma: no cover - compiled
    """tile[r, k] = tile[r, k] * s[n, g] - so[n, g] (so = s * offset), g = k // gsz."""
    nb = s.shape[1]
    for r in prange(n1 - n0):
        n = n0 + r
        tr = tile[r]
        for g in range(nb):
            a = s[n, g]
            c = so[n, g]
            for k in range(g * gsz, g * gsz + gsz):
                tr[k] = tr[k] * a - c


@njit(parallel=True, fastmath=True, cache=True)
def dequant_rows_b8(w, n0, n1, tile):  # pragma: no cover - compiled
    """tile[r, k] = float32(w[n0 + r, k]) for an 8-bit plane, unscaled."""
    for r in prange(n1 - n0):
        wr = w[n0 + r]
        tr = tile[r]
        for k in range(wr.shape[0]):
            tr[k] = np.float32(wr[k])


# ---- XNOR-popcount: binary weights x binary activations ------------------------------------------
if HAVE_NUMBA:
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _popcount64(typingctx, v):  # pragma: no cover - compiled
        """LLVM's ctpop: one popcnt (vpopcntq once the loop vectorises) where the SWAR idiom took ~12
        instructions that LLVM did not fold back (measured: docs/DESIGN.md, 'Kernels')."""
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen
else:  # pragma: no cover - without numba the kernels are unavailable
    def _popcount64(v):
        return bin(int(v)).count("1")


@njit(fastmath=True, cache=True)
def _xnor_column(wr, xb, s, n, beta, gwords, k_valid, out):  # pragma: no cover - compiled
    """Output column ``n`` (weight row ``wr``) for every activation row of ``xb``."""
    nb = s.shape[1]
    nw = wr.shape[0]
    for m in range(xb.shape[0]):
        xr = xb[m]
        if nb == 1:  # one scale per row: a single reduction over the row, which LLVM vectorises
            pc1 = np.uint64(0)
            for j in range(nw):
                pc1 += _popcount64(wr[j] ^ xr[j])
            out[m, n] = beta[m] * s[n, 0] * np.float32(k_valid - 2 * np.int64(pc1))
            continue
        tot = np.float32(0.0)
        for g in range(nb):
            pc = np.uint64(0)
            for j in range(g * gwords, g * gwords + gwords):
                pc += _popcount64(wr[j] ^ xr[j])
            kg = min(64 * gwords, k_valid - 64 * gwords * g)
            tot += s[n, g] * np.float32(kg - 2 * np.int64(pc))
        out[m, n] = beta[m] * tot


@njit(parallel=True, fastmath=True, cache=True)
def xnor_gemm(wb, xb, s, beta, gwords, k_valid, out):  # pragma: no cover - compiled
    """out[m, n] = beta[m] * sum_g s[n, g] * (k_g - 2 popcount(w xor x) over group g).

    Padding bits are 0 in both operands (they agree), so each group counts its valid length
    ``k_g``: a full group is ``64 * gwords`` bits, the last one what is left of ``k_valid``.
    """
    for n in prange(wb.shape[0]):
        _xnor_column(wb[n], xb, s, n, beta, gwords, k_valid, out)


@njit(fastmath=True, cache=True)
def xnor_gemm_serial(wb, xb, s, beta, gwords, k_valid, out):  # pragma: no cover - compiled
    """:func:`xnor_gemm` on one thread: below ~4M word operations the parallel launch of numba's
    workqueue pool costs more than the work (measured: docs/DESIGN.md, 'Kernels')."""
    for n in range(wb.shape[0]):
        _xnor_column(wb[n], xb, s, n, beta, gwords, k_valid, out)


@njit(cache=True)  # serial: a parallel launch costs more than packing 64 rows of 4096 (docs/DESIGN.md, 'Kernels')
def pack_signs(x, nwords, out):  # pragma: no cover - compiled
    """Bit k of word k // 64 of row m is 1 where x[m, k] >= 0 (the sign(+1) convention)."""
    m_in, k_in = x.shape
    full = k_in // 64
    for m in range(m_in):
        for j in range(full):  # branch-free: LLVM turns the 64 compares into mask operations
            word = np.uint64(0)
            for i in range(64):
                word |= np.uint64(x[m, 64 * j + i] >= 0) << np.uint64(i)
            out[m, j] = word
        for j in range(full, nwords):  # the partial last word, then zero padding
            word = np.uint64(0)
            for i in range(64):
                k = 64 * j + i
                if k < k_in and x[m, k] >= 0:
                    word |= np.uint64(1) << np.uint64(i)
            out[m, j] = word


@njit(fastmath=True, cache=True)
def nibbles_scaled(w, s, so, gsz, out):  # pragma: no cover - compiled
    """One 4-bit plane dequantised and scaled in one pass: element 2j of a group is the low nibble of its
    byte j, 2j + 1 the high one. The loops index 1-D row slices: LLVM vectorised none of the 2-D indexed
    form (3.4x slower at 384x1536, docs/DESIGN.md 'Every CPU')."""
    h = gsz // 2
    for r in range(w.shape[0]):
        wr, orow, sr, sor = w[r], out[r], s[r], so[r]
        for g in range(sr.shape[0]):
            a, c = sr[g], sor[g]
            wv, ov = wr[g * h: g * h + h], orow[g * gsz: g * gsz + gsz]
            for j in range(h):
                b = wv[j]
                ov[2 * j] = np.float32(b & np.uint8(15)) * a - c
                ov[2 * j + 1] = np.float32(b >> np.uint8(4)) * a - c


@njit(fastmath=True, cache=True)
def bytes_scaled(w, s, so, gsz, out):  # pragma: no cover - compiled
    """One 8-bit plane dequantised and scaled in one pass: ``out[r, k] = w[r, k] * s[r, g] - so[r, g]``
    (1-D row slices, as in :func:`nibbles_scaled`: 11x faster than 2-D indexing)."""
    for r in range(w.shape[0]):
        wr, orow, sr, sor = w[r], out[r], s[r], so[r]
        for g in range(sr.shape[0]):
            a, c = sr[g], sor[g]
            wv, ov = wr[g * gsz: g * gsz + gsz], orow[g * gsz: g * gsz + gsz]
            for k in range(gsz):
                ov[k] = np.float32(wv[k]) * a - c


@njit(fastmath=True, cache=True)
def crumbs_into(w, mult, first, out):  # pragma: no cover - compiled
    """One 2-bit plane into ``out`` (``=`` when ``first``, else ``+=``) times ``mult``: code 4j + i of a row is
    bits 2i, 2i + 1 of its byte j. Serial, 1-D row slices, constant writes per byte (as
    :func:`nibbles_scaled`): the general :func:`dequant_rows` strides by a run-time ``per`` and vectorises none."""
    for r in range(w.shape[0]):
        wr, orow = w[r], out[r]
        if first:
            for j in range(wr.shape[0]):
                b = wr[j]
                orow[4 * j] = mult * np.float32(b & np.uint8(3))
                orow[4 * j + 1] = mult * np.float32((b >> np.uint8(2)) & np.uint8(3))
                orow[4 * j + 2] = mult * np.float32((b >> np.uint8(4)) & np.uint8(3))
                orow[4 * j + 3] = mult * np.float32(b >> np.uint8(6))
        else:
            for j in range(wr.shape[0]):
                b = wr[j]
                orow[4 * j] += mult * np.float32(b & np.uint8(3))
                orow[4 * j + 1] += mult * np.float32((b >> np.uint8(2)) & np.uint8(3))
                orow[4 * j + 2] += mult * np.float32((b >> np.uint8(4)) & np.uint8(3))
                orow[4 * j + 3] += mult * np.float32(b >> np.uint8(6))


@njit(fastmath=True, cache=True)
def bits_into(w, mult, first, out):  # pragma: no cover - compiled
    """One 1-bit plane into ``out`` (as :func:`crumbs_into`): code 8j + i of a row is bit i of its byte j."""
    for r in range(w.shape[0]):
        wr, orow = w[r], out[r]
        if first:
            for j in range(wr.shape[0]):
                b = wr[j]
                orow[8 * j + 0] = mult * np.float32((b >> np.uint8(0)) & np.uint8(1))
                orow[8 * j + 1] = mult * np.float32((b >> np.uint8(1)) & np.uint8(1))
                orow[8 * j + 2] = mult * np.float32((b >> np.uint8(2)) & np.uint8(1))
                orow[8 * j + 3] = mult * np.float32((b >> np.uint8(3)) & np.uint8(1))
                orow[8 * j + 4] = mult * np.float32((b >> np.uint8(4)) & np.uint8(1))
                orow[8 * j + 5] = mult * np.float32((b >> np.uint8(5)) & np.uint8(1))
                orow[8 * j + 6] = mult * np.float32((b >> np.uint8(6)) & np.uint8(1))
                orow[8 * j + 7] = mult * np.float32((b >> np.uint8(7)) & np.uint8(1))
        else:
            for j in range(wr.shape[0]):
                b = wr[j]
                orow[8 * j + 0] += mult * np.float32((b >> np.uint8(0)) & np.uint8(1))
                orow[8 * j + 1] += mult * np.float32((b >> np.uint8(1)) & np.uint8(1))
                orow[8 * j + 2] += mult * np.float32((b >> np.uint8(2)) & np.uint8(1))
                orow[8 * j + 3] += mult * np.float32((b >> np.uint8(3)) & np.uint8(1))
                orow[8 * j + 4] += mult * np.float32((b >> np.uint8(4)) & np.uint8(1))
                orow[8 * j + 5] += mult * np.float32((b >> np.uint8(5)) & np.uint8(1))
                orow[8 * j + 6] += mult * np.float32((b >> np.uint8(6)) & np.uint8(1))
                orow[8 * j + 7] += mult * np.float32((b >> np.uint8(7)) & np.uint8(1))


@njit(fastmath=True, cache=True)
def scale_groups(out, s, so, gsz):  # pragma: no cover - compiled
    """``out[r, k] = out[r, k] * s[r, g] - so[r, g]``, g = k // gsz: :func:`scale_rows` serially on 1-D slices."""
    for r in range(out.shape[0]):
        orow, sr, sor = out[r], s[r], so[r]
        for g in range(sr.shape[0]):
            a, c = sr[g], sor[g]
            ov = orow[g * gsz: g * gsz + gsz]
            for k in range(gsz):
                ov[k] = ov[k] * a - c
