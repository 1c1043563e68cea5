/* Low-bit GEMV for CPUs with or without AVX2: codes of 1, 2, 4 or 8 bits times int8 activations.
 *
 * y[n] = sum over activation blocks b of  float(mult * <u_n,b, xq_b> - off_n,b * sum(xq_b)) * (ws[n, g(b)] * xs[b])
 *
 * u are unsigned codes (w = scale * (mult * u - off)), xq the activations quantised to int8 per block of xb
 * elements (scale xs = absmax / 127). Every product u * xq is at most 15 * 127, so the pairwise 16-bit sums of
 * vpmaddubsw (2 * 15 * 127 = 3810) cannot saturate: the integer dot is exact with or without VNNI. Codes of
 * 8 bits are stored signed (u - 128, `off` lowered by 128 * mult) and multiplied as |u| times x carrying u's
 * sign, at most 2 * 128 * 127 = 32512 per pair sum: exact too. The AVX2 and
 * the portable path do the same integer and float operations in the same order, so they agree bit for bit:
 * block b's term goes to float lane b % 8, and the eight lanes are summed as a fixed tree at the end.
 *
 * Weight layout (made once in Python): per row, superblocks of 32 bytes holding 32 * (8 / bits) codes; bit
 * plane p of byte j holds code 32 * p + j of the superblock, so one shift and one mask give 32 codes in order.
 * Scales are fp16 bits, one per (row, weight group); offsets one per row (off) or one byte per (row, group).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "dequant.h"

typedef struct {
    const uint8_t *w;      /* (n, row_bytes) */
    const uint16_t *ws;    /* (n, nbw) fp16 bits */
    const uint8_t *zo;     /* (n, nbw) offsets, or NULL: `off` for all */
    const int8_t *xq;      /* (m, kp) */
    const float *xs;       /* (m, nb8) */
    const int32_t *xsum;   /* (m, nb8) */
    const int32_t *gw;     /* (nbx) the weight group of each activation block */
    float *y;              /* (m, n) */
    int64_t m, n, kp, row_bytes, g, xb, nbw, nb8;
    int bits, mult, off;
    int pf8;               /* 8-bit one-row GEMVs prefetch their weights into L2 (BL_PF8 on an Intel CPU) */
} Job;

/* block b's term for activation row r: float(mult * dot - off * xsum) * (weight scale * activation scale) */
static inline float block_term(const Job *J, int64_t n, int64_t r, int64_t b, int32_t dot) {
    int64_t gw = J->gw[b];
    int32_t off = J->zo ? (int32_t)J->zo[n * J->nbw + gw] : J->off;
    int32_t d = J->mult * dot - off * J->xsum[r * J->nb8 + b];
    return (float)d * (half_to_float(J->ws[n * J->nbw + gw]) * J->xs[r * J->nb8 + b]);
}

static inline float lanes_sum(const float *l) { /* the tree the AVX2 reduction makes */
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* weight rows r0..r1 against every activation row: a weight row is read from memory once per call */
static void rows_portable(const Job *J, int64_t r0, int64_t r1) {
    const int per = 8 / J->bits, mask = (1 << J->bits) - 1;
    const int64_t nbx = J->kp / J->xb, cpb = J->xb / 32;
    for (int64_t n = r0; n < r1; n++) {
        for (int64_t r = 0; r < J->m; r++) {
            const uint8_t *src = J->w + n * J->row_bytes;
            const int8_t *xv = J->xq + r * J->kp;
            int p = 0;
            float lanes[8] = {0};
            for (int64_t b = 0; b < nbx; b++) {
                int32_t dot = 0;
                for (int64_t t = 0; t < cpb; t++, xv += 32) {
                    int shift = J->bits * p;
                    if (J->bits == 8) {
                        for (int j = 0; j < 32; j++) dot += (int8_t)src[j] * xv[j];
                    } else {
                        for (int j = 0; j < 32; j++) dot += ((src[j] >> shift) & mask) * xv[j];
                    }
                    if (++p == per) { p = 0; src += 32; }
                }
                lanes[b % 8] = lanes[b % 8] + block_term(J, n, r, b, dot);
            }
            J->y[r * J->n + n] = lanes_sum(lanes);
        }
    }
}

/* ---- the batch GEMM (`tiles`): the same sum as `gemv` over the same int8 activation grid, vectorised across
 * outputs (lowbit_tiles.h). Weights are columns of eight outputs; per column, 32-byte vectors of four codes per
 * output and bit plane, stored in panels of the path's register tile width (tn columns: vector kv of a panel's
 * column t at (kv * width + t) * 32 from the panel's start; the last panel may be narrower), so a tile reads one
 * stream from memory where separate columns were tn streams (docs/DESIGN.md, 'One grid'). Each output's float
 * sum adds block terms in block order, so every path gives the same bits: y = (((0 + t_0) + t_1) + ...),
 * t_b = float(mult * dot - off * xsum) * (weight scale * activation scale). ---- */
typedef struct {
    const uint8_t *w;      /* (nc, kp * bits) bytes in panels of tn columns (above) */
    const uint16_t *ws;    /* (nc, nbw, 8) fp16 bits */
    const uint8_t *zo;     /* (nc, nbw, 8) offsets, or NULL: `off` for all */
    const int8_t *xq;      /* (m, kp) */
    const float *xs;       /* (m, nbx) */
    const int32_t *xsum;   /* (m, nbx) */
    float *y;              /* (m, n) */
    int64_t m, n, nc, kp, g, xb, nbw, nbx;
    int bits, mult, off, tn;
    int pf2;               /* one-row tiles prefetch into L2, then L1 (an Intel CPU), else into L1 alone */
} TJob;

#ifndef TILE_ROWS
#define TILE_ROWS 64 /* activation rows per chunk: 64 x kp int8 stays in L2 while the columns pass */
#endif
#ifndef TILES_AVX2_TM /* register tiles (activation rows x columns of eight outputs): sixteen ymm registers */
#define TILES_AVX2_TM 2
#define TILES_AVX2_TN 2
#endif
#ifndef TILES_VNNI_TM /* thirty-two with AVX-512 VL: 4 x 3 ran 9 % faster than 4 x 2 over MiniLM's and square shapes */
#define TILES_VNNI_TM 4
#define TILES_VNNI_TN 3
#endif

#ifdef BL_X86
/* a register tile's per-row vectors (lowbit_rows.h): named fields, so they stay in registers */
typedef struct { __m256i r0, r1, r2, r3; } Rows4;
typedef struct { __m256 r0, r1, r2, r3; } Lanes4;
#define AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))
/* software prefetch distance in bytes of weights: 4 KiB measured 15 % faster than none for int4 streamed from
 * memory (2048 to 8192 alike), 7 % for int2, nothing for binary, which is compute-bound */
#define BL_PF 4096
#ifndef BL_PF8 /* 8-bit one-row GEMVs on Intel CPUs ask for their weights into L2 far ahead, into L1 near (1; 0: the
                * hardware prefetcher alone, as on AMD, where 4 KiB ahead into L1 was slower: docs/DESIGN.md,
                * 'A C GEMV for one row') */
#define BL_PF8 1
#endif
#define BL_PF8_L1 512 /* bytes ahead the 8-bit one-row lines are asked into L1 (256 to 1024 alike) */
#ifndef BL_XOR8 /* one-row 8-bit codes on VNNI as (w + 128) x x less 128 * sum(x) (1) or |w| x sign(x, w) (0): one
                 * instruction fewer per 32 codes; on an Intel Xeon int8 4096² streamed +12 %, in cache +4 % */
#define BL_XOR8 1
#endif
#ifndef BL_ROWPF /* lines at the start of the weight row BL_ROWPF_AHEAD rows ahead that the one-row GEMV asks for
                  * (0: none): a row of 4096 int8 codes is one 4 KiB page, where the hardware prefetcher stops; on
                  * an Intel Xeon int8 4096² streamed +5-9 % (VNNI path), +2-5 % (AVX2), in cache no slower */
#define BL_ROWPF 4
#define BL_ROWPF_AHEAD 2
#endif
#ifndef BL_TPF /* bytes a one-row tile prefetches ahead (0: none): on an Intel Xeon int4 streamed +16 % (VNNI path),
                * +2 % (AVX2), int2 +37 / +49 %, in cache no slower (docs/results/notes.md, 'An Intel Xeon') */
#define BL_TPF 2048
#endif
#define BL_TPF_L1 1024 /* on Intel CPUs (TJob.pf2) one-row tiles ask BL_PF ahead into L2, this far ahead into L1 */

/* the one-row tiles' hint for the line at `at` (prefetch_ahead, common.h) */
#define TILE_PREFETCH(J, at) prefetch_ahead((at), (J)->pf2, BL_PF, BL_TPF_L1, BL_TPF)

#define BL_ATTR AVX2
#define BL_FN(name) name##_avx2
#define BL_VNNI 0
#define BL_R 2 /* sixteen ymm registers */
#include "lowbit_rows.h"
#define BL_TM TILES_AVX2_TM
#define BL_TN TILES_AVX2_TN
#include "lowbit_tiles.h"
#undef BL_TM
#undef BL_TN
#undef BL_ATTR
#undef BL_FN
#undef BL_VNNI
#undef BL_R
#define VNNI __attribute__((target("avx2,fma,f16c,popcnt,avx512f,avx512vl,avx512vnni")))
#define BL_ATTR VNNI
#define BL_FN(name) name##_vnni
#define BL_VNNI 1
#define BL_R 4 /* thirty-two with AVX-512 VL */
#include "lowbit_rows.h"
#define BL_TM TILES_VNNI_TM
#define BL_TN TILES_VNNI_TN
#include "lowbit_tiles.h"
#undef BL_TM
#undef BL_TN
#undef BL_ATTR
#undef BL_FN
#undef BL_VNNI
#define BL_ATTR __attribute__((target("avx2,fma,f16c,popcnt,avx512f,avx512bw,avx512vl")))
#define BL_FN(name) name##_bw
#define BL_VNNI 0
#include "lowbit_tiles512.h"
#undef BL_ATTR
#undef BL_FN
#undef BL_VNNI
#define BL_ATTR __attribute__((target("avx2,fma,f16c,popcnt,avx512f,avx512bw,avx512vl,avx512vnni")))
#define BL_FN(name) name##_zvnni
#define BL_VNNI 1
#include "lowbit_tiles512.h"
#endif

static void tiles_portable(const TJob *J, int64_t c0, int64_t c1) {
    const int per = 8 / J->bits, mask = (1 << J->bits) - 1;
    const int64_t cbytes = J->kp * J->bits;
    for (int64_t c = c0; c < c1; c++) {
        const int64_t p0 = c - c % J->tn, width = J->nc - p0 < J->tn ? J->nc - p0 : J->tn; /* c's panel */
        for (int lane = 0; lane < 8 && c * 8 + lane < J->n; lane++) {
            const int64_t n = c * 8 + lane;
            for (int64_t r = 0; r < J->m; r++) {
                const int8_t *xv = J->xq + r * J->kp;
                float acc = 0.0f;
                for (int64_t b = 0; b < J->nbx; b++) {
                    int32_t dot = 0;
                    for (int64_t k = b * J->xb; k < (b + 1) * J->xb; k++) {
                        const int64_t kv = k / (4 * per), p = (k % (4 * per)) / 4, j = k % 4;
                        const uint8_t byte = J->w[p0 * cbytes + (kv * width + c - p0) * 32 + 4 * lane + j];
                        dot += ((byte >> (J->bits * p)) & mask) * xv[k];
                    }
                    const int64_t at = (c * J->nbw + b * J->xb / J->g) * 8 + lane;
                    const int32_t off = J->zo ? (int32_t)J->zo[at] : J->off;
                    const int32_t d = J->mult * dot - off * J->xsum[r * J->nbx + b];
                    acc = acc + (float)d * (half_to_float(J->ws[at]) * J->xs[r * J->nbx + b]);
                }
                J->y[r * J->n + n] = acc;
            }
        }
    }
}

/* ---- rows split over OpenMP threads. Imported after torch, this module binds to the libgomp torch loaded
 * (same soname), so it runs on torch's own pool: a separate pool's threads fought torch's spinning ones for
 * the cores (int8 4096^2 at one row: 1.9 ms against 0.8 ms alone) ---- */
static void run_part(const void *job, int simd, int part, int parts) {
    const Job *J = job;
    int64_t r0 = J->n * part / parts, r1 = J->n * (part + 1) / parts;
#ifdef BL_X86
    if (simd == 2) { rows_vnni(J, r0, r1); return; }
    if (simd) { rows_avx2(J, r0, r1); return; }
#endif
    rows_portable(J, r0, r1);
}

#define SHARED_QUANT_MIN 8192 /* activations from which the threads share their quantisation (prep_then_run) */

/* the path gemv and tiles run for a requested simd on this CPU (each falls back to the one below) */
static int run_path(int simd) {
    if (simd == 2 && !cpu_vnni()) simd = 1;
    if (simd && !cpu_avx2()) simd = 0;
    return simd;
}

/* the arguments gemv and tiles share: (w, ws, zo_or_None, x, y, m, n, k, kp, g, xb, bits, mult, off, simd,
 * threads); simd: 0 portable, 1 AVX2, 2 AVX-512 VNNI (each falls back to the one below where the CPU lacks it);
 * tiles also 3 and 4, 512-bit registers without and with VNNI (lowbit_tiles512.h; fall back to 1 and 2) */
typedef struct {
    Py_buffer w, ws, x, y, zo;
    int has_zo;
    Py_ssize_t m, n, k, kp, g, xb;
    int bits, mult, off, simd, threads;
} Call;

static void release_call(Call *c) {
    PyBuffer_Release(&c->w); PyBuffer_Release(&c->ws); PyBuffer_Release(&c->x); PyBuffer_Release(&c->y);
    if (c->has_zo) PyBuffer_Release(&c->zo);
}

/* 1, or 0 with a Python error set and nothing held */
static int parse_call(PyObject *args, Call *c) {
    PyObject *zobj;
    memset(c, 0, sizeof *c);
    if (!PyArg_ParseTuple(args, "y*y*Oy*w*nnnnnniiiii", &c->w, &c->ws, &zobj, &c->x, &c->y, &c->m, &c->n, &c->k,
                          &c->kp, &c->g, &c->xb, &c->bits, &c->mult, &c->off, &c->simd, &c->threads))
        return 0;
    if (zobj != Py_None && PyObject_GetBuffer(zobj, &c->zo, PyBUF_SIMPLE) != 0) {
        release_call(c);
        return 0;
    }
    c->has_zo = zobj != Py_None;
    return 1;
}

/* gemv(...): the Call arguments; codes of 1, 2, 4 or 8 bits in rows */
static PyObject *gemv(PyObject *self, PyObject *args) {
    Call c;
    if (!parse_call(args, &c)) return NULL;
    PyObject *ret = NULL;
    const Py_ssize_t m = c.m, n = c.n, k = c.k, kp = c.kp, g = c.g, xb = c.xb;
    const int bits = c.bits;
    int64_t nbw = kp / g, nbx = kp / xb, row_bytes = kp * bits / 8;
    if (!(bits == 1 || bits == 2 || bits == 4 || bits == 8) || xb % 32 || g % xb || kp % (32 * (8 / bits)) || kp % g || k > kp
        || c.w.len < n * row_bytes || c.ws.len < (Py_ssize_t)(n * nbw * 2) || c.x.len < (Py_ssize_t)(m * k * 4)
        || c.y.len < (Py_ssize_t)(m * n * 4) || (c.has_zo && c.zo.len < n * nbw)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.gemv: buffer sizes or block sizes do not fit");
        goto done;
    }
    const int simd = run_path(c.simd);
    /* every row's activations quantised first, then one pass over the weights serves all rows (kp is a
     * multiple of 32, so each row's codes stay 32-byte aligned) */
    int8_t *xq = m > 0 ? aligned_alloc(32, (size_t)(m * kp)) : NULL;
    int64_t nb8 = (nbx + 7) / 8 * 8; /* the AVX2 path reads blocks eight at a time */
    float *xs = calloc((size_t)(m > 0 ? m : 1) * nb8, sizeof(float));
    int32_t *xsum = calloc((size_t)(m > 0 ? m : 1) * nb8, sizeof(int32_t)), *gw = calloc(nb8, sizeof(int32_t));
    if ((m > 0 && !xq) || !xs || !xsum || !gw) { free(xq); free(xs); free(xsum); free(gw); PyErr_NoMemory(); goto done; }
    for (int64_t b = 0; b < nbx; b++) gw[b] = (int32_t)(b * xb / g);
    Job J = {c.w.buf, c.ws.buf, c.has_zo ? c.zo.buf : NULL, xq, xs, xsum, gw, (float *)c.y.buf,
             m, n, kp, row_bytes, g, xb, nbw, nb8, bits, c.mult, c.off, BL_PF8 && cpu_intel()};
    const QuantRows Q = {(const float *)c.x.buf, xq, xs, xsum, m, k, kp, xb, nb8};
    int parts = c.threads < 1 ? 1 : c.threads;
    if ((int64_t)parts > n) parts = (int)(n > 0 ? n : 1);
    Py_BEGIN_ALLOW_THREADS
    if (m > 0) prep_then_run(quant_part, &Q, m * kp, SHARED_QUANT_MIN, run_part, &J, simd, parts);
    Py_END_ALLOW_THREADS
    free(xq); free(xs); free(xsum); free(gw);
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_call(&c);
    return ret;
}

/* the path tiles runs for a requested simd on this CPU: the 512-bit paths 4 (VNNI) and 3 fall back to 2 and 1, the
 * others as run_path */
static int tiles_path(int simd) {
    if (simd == 4) return cpu_avx512bw() && cpu_vnni() ? 4 : run_path(2);
    if (simd == 3) return cpu_avx512bw() && cpu_avx2() ? 3 : run_path(1);
    return run_path(simd);
}

/* columns per register tile of a path (a thread's share is a whole number of tiles) */
static int tile_cols(int simd) {
#ifdef BL_X86
    if (simd >= 3) return 2 * TILES_BW_RZ;
#endif
    return simd == 2 ? TILES_VNNI_TN : simd ? TILES_AVX2_TN : 1;
}

/* panel_cols(simd): the panel width `tiles` expects its weights in for a requested simd on this CPU */
static PyObject *panel_cols(PyObject *self, PyObject *args) {
    int simd;
    if (!PyArg_ParseTuple(args, "i", &simd)) return NULL;
    return PyLong_FromLong(tile_cols(tiles_path(simd)));
}

/* columns c0..c1 of the batch GEMM on one thread */
static void tiles_part(const void *job, int simd, int part, int parts) {
    const TJob *J = job;
    const int64_t tn = tile_cols(simd), units = (J->nc + tn - 1) / tn;
    int64_t c0 = units * part / parts * tn, c1 = units * (part + 1) / parts * tn;
    if (c1 > J->nc) c1 = J->nc;
    if (c0 >= c1) return;
#ifdef BL_X86
    if (simd == 4) { tiles512_zvnni(J, c0, c1); return; }
    if (simd == 3) { tiles512_bw(J, c0, c1); return; }
    if (simd == 2) { tiles_vnni(J, c0, c1); return; }
    if (simd) { tiles_avx2(J, c0, c1); return; }
#endif
    tiles_portable(J, c0, c1);
}

/* tiles(...): the Call arguments; codes of 1, 2 or 4 bits in the column layout above, in panels of
 * panel_cols(simd) columns */
static PyObject *tiles(PyObject *self, PyObject *args) {
    Call c;
    if (!parse_call(args, &c)) return NULL;
    PyObject *ret = NULL;
    const Py_ssize_t m = c.m, n = c.n, k = c.k, kp = c.kp, g = c.g, xb = c.xb;
    const int bits = c.bits;
    const int64_t nc = (n + 7) / 8, nbw = g > 0 ? kp / g : 0, nbx = xb > 0 ? kp / xb : 0;
    if (!(bits == 1 || bits == 2 || bits == 4) || xb < 32 || xb % 32 || g % xb || kp % g || k > kp || m < 0
        || c.w.len < nc * kp * bits || c.ws.len < (Py_ssize_t)(nc * nbw * 16) || c.x.len < (Py_ssize_t)(m * k * 4)
        || c.y.len < (Py_ssize_t)(m * n * 4) || (c.has_zo && c.zo.len < nc * nbw * 8)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.tiles: buffer sizes or block sizes do not fit");
        goto done;
    }
    const int simd = tiles_path(c.simd), threads = c.threads < 1 ? 1 : c.threads;
    int8_t *xq = m > 0 ? aligned_alloc(32, (size_t)(m * kp)) : NULL;
    float *xs = calloc((size_t)(m > 0 ? m : 1) * nbx, sizeof(float));
    int32_t *xsum = calloc((size_t)(m > 0 ? m : 1) * nbx, sizeof(int32_t));
    if ((m > 0 && !xq) || !xs || !xsum) { free(xq); free(xs); free(xsum); PyErr_NoMemory(); goto done; }
    TJob J = {c.w.buf, c.ws.buf, c.has_zo ? c.zo.buf : NULL, xq, xs, xsum, (float *)c.y.buf, m, n, nc, kp, g, xb, nbw,
              nbx, bits, c.mult, c.off, tile_cols(simd), cpu_intel()};
    const int64_t units = (nc + tile_cols(simd) - 1) / tile_cols(simd);
    const int parts = (int64_t)threads > units ? (int)units : threads;
    const QuantRows Q = {(const float *)c.x.buf, xq, xs, xsum, m, k, kp, xb, nbx};
    Py_BEGIN_ALLOW_THREADS
    prep_then_run(quant_part, &Q, m * kp, SHARED_QUANT_MIN, tiles_part, &J, simd, parts);
    Py_END_ALLOW_THREADS
    free(xq); free(xs); free(xsum);
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_call(&c);
    return ret;
}

#include "xnor.h" /* XNOR-popcount: binary weights x sign(x) */
#include "bf16.h" /* bf16 or fp16 weights x fp32 activations at a few rows */

/* dequant(w, s, so, out, n, kp, gsz, bits, sign, simd, threads): see dequant.h; simd 0 portable, 1 AVX2 */
static PyObject *dequant(PyObject *self, PyObject *args) {
    Py_buffer w, s, so, out;
    Py_ssize_t n, kp, gsz;
    int bits, sign, simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*y*w*nnniiii", &w, &s, &so, &out, &n, &kp, &gsz, &bits, &sign, &simd, &threads))
        return NULL;
    PyObject *ret = NULL;
    int64_t nb = gsz > 0 ? kp / gsz : 0;
    if (!(bits == 4 || bits == 8) || gsz < 1 || kp % gsz || (bits == 4 && gsz % 2) || n < 0
        || w.len < (Py_ssize_t)(n * kp * bits / 8) || s.len < (Py_ssize_t)(n * nb * 4)
        || so.len < (Py_ssize_t)(n * nb * 4) || out.len < (Py_ssize_t)(n * kp * 4)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.dequant: buffer sizes or group size do not fit");
        goto done;
    }
    if (simd && !cpu_avx2()) simd = 0;
    DJob J = {w.buf, s.buf, so.buf, out.buf, n, kp, gsz, nb, bits, sign};
    Py_BEGIN_ALLOW_THREADS
    dq_parallel(&J, simd, threads);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&s); PyBuffer_Release(&so); PyBuffer_Release(&out);
    return ret;
}

/* ---- rows of a packed weight, dequantised (embedding lookups): out[r, j] = value of code j of row rows[r].
 * Codes of 1, 2, 4 or 8 bits, rows on byte boundaries (bit plane order of formats/packing.py: code i of a byte
 * at bits * (i % (8 / bits))); signed code q = mult * u - off. As QuantizedTensor.dequantize: with integer zero
 * points (packed as the codes) float(q - z) * s, with float ones (float(q) - z) * s,
 * else float(q) * s: every integer is exact in float, so the bits are those of the torch path. Scales and float
 * zero points are fp16 (0), fp32 (1) or bf16 (2). Scalar C: a lookup reads a few rows. ---- */
static inline float stored_float(const void *p, int dt, int64_t i) {
    if (dt == 0) return half_to_float(((const uint16_t *)p)[i]);
    if (dt == 1) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline int32_t packed_code(const uint8_t *row, int64_t j, int bits) {
    if (bits == 8) return row[j];
    const int per = 8 / bits;
    return (row[j / per] >> (bits * (j % per))) & ((1 << bits) - 1);
}

/* a row's n signed codes mult * u - off into q: one loop per width, so the shifts are constants */
static void signed_codes(const uint8_t *row, int64_t n, int bits, int32_t mult, int32_t off, int32_t *q) {
    switch (bits) {
    case 1: for (int64_t j = 0; j < n; j++) q[j] = mult * ((row[j >> 3] >> (j & 7)) & 1) - off; break;
    case 2: for (int64_t j = 0; j < n; j++) q[j] = mult * ((row[j >> 2] >> (2 * (j & 3))) & 3) - off; break;
    case 4: for (int64_t j = 0; j < n; j++) q[j] = mult * ((row[j >> 1] >> (4 * (j & 1))) & 15) - off; break;
    default: for (int64_t j = 0; j < n; j++) q[j] = mult * row[j] - off;
    }
}

/* gather_rows(packed, rows, out, c, k, bits, mult, off, scale, sdt, nb, b, zp_or_None, zkind);
 * zkind: 0 none, 1 integer (packed), 2 float (stored as sdt says: zdt = zkind - 2) */
static PyObject *gather_rows(PyObject *self, PyObject *args) {
    Py_buffer w, rows, out, sc, zp = {0};
    PyObject *zobj;
    Py_ssize_t c, k, nb, b;
    int bits, mult, off, sdt, zkind;
    if (!PyArg_ParseTuple(args, "y*y*w*nniiiy*innOi", &w, &rows, &out, &c, &k, &bits, &mult, &off, &sc, &sdt, &nb,
                          &b, &zobj, &zkind))
        return NULL;
    PyObject *ret = NULL;
    const int has_z = zobj != Py_None;
    if (has_z && PyObject_GetBuffer(zobj, &zp, PyBUF_SIMPLE) != 0) goto done;
    const int64_t nr = rows.len / 8, rb = k * bits / 8;
    const int ssz = sdt == 1 ? 4 : 2, zdt = zkind - 2, zsz = zdt == 1 ? 4 : 2;
    if (!(bits == 1 || bits == 2 || bits == 4 || bits == 8) || (k * bits) % 8 || sdt < 0 || sdt > 2 || b < 1
        || nb != (k + b - 1) / b || zkind < 0 || zkind > 4 || has_z != (zkind > 0)
        || w.len < c * rb || sc.len < c * nb * ssz || out.len < nr * k * 4
        || (zkind == 1 && zp.len < (c * nb * bits + 7) / 8) || (zkind > 1 && zp.len < c * nb * zsz)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.gather_rows: buffer sizes or formats do not fit");
        goto done;
    }
    const int64_t *ix = rows.buf;
    for (int64_t r = 0; r < nr; r++)
        if (ix[r] < 0 || ix[r] >= c) {
            PyErr_Format(PyExc_IndexError, "index %lld is out of range for %lld rows", (long long)ix[r], (long long)c);
            goto done;
        }
    int32_t *q = malloc((size_t)(k > 0 ? k : 1) * sizeof(int32_t));
    if (!q) { PyErr_NoMemory(); goto done; }
    const uint8_t *wb = w.buf;
    float *o = out.buf;
    for (int64_t r = 0; r < nr; r++, o += k) {
        const int64_t i = ix[r];
        signed_codes(wb + i * rb, k, bits, mult, off, q);
        for (int64_t g = 0; g < nb; g++) {
            const float s = stored_float(sc.buf, sdt, i * nb + g);
            const int64_t j1 = (g + 1) * b < k ? (g + 1) * b : k;
            if (zkind == 1) {
                const int32_t z = mult * packed_code(zp.buf, i * nb + g, bits) - off;
                for (int64_t j = g * b; j < j1; j++) o[j] = (float)(q[j] - z) * s;
            } else if (zkind > 1) {
                const float z = stored_float(zp.buf, zdt, i * nb + g);
                for (int64_t j = g * b; j < j1; j++) o[j] = ((float)q[j] - z) * s;
            } else {
                for (int64_t j = g * b; j < j1; j++) o[j] = (float)q[j] * s;
            }
        }
    }
    free(q);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&rows); PyBuffer_Release(&out); PyBuffer_Release(&sc);
    if (has_z && zp.obj) PyBuffer_Release(&zp);
    return ret;
}

#include "features.h"
#include "static16.h"

static PyObject *has_avx2(PyObject *self, PyObject *noargs) { return PyBool_FromLong(cpu_avx2()); }

static PyObject *feature_bits(PyObject *self, PyObject *noargs) {
#ifdef BL_CPUID
    return PyLong_FromUnsignedLong(cpu_feature_bits());
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *identity(PyObject *self, PyObject *noargs) {
#ifdef BL_CPUID
    char brand[49], vendor[13];
    unsigned fms[3];
    if (cpu_identity(brand, vendor, fms)) return Py_BuildValue("(ssIII)", brand, vendor, fms[0], fms[1], fms[2]);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gemv", gemv, METH_VARARGS, "Low-bit codes x int8 activations, rows split over threads."},
    {"tiles", tiles, METH_VARARGS, "1-, 2- or 4-bit codes x int8 activations at batch, outputs across lanes."},
    {"panel_cols", panel_cols, METH_VARARGS, "Columns per weight panel `tiles` expects for a requested simd."},
    {"static16", static16, METH_VARARGS, "8-bit codes x a static uint8 grid, exact in 16-bit pairs (no VNNI)."},
    {"xnor", xnor, METH_VARARGS, "Binary weights x sign activations (XNOR-popcount), rows split over threads."},
    {"wide16", wide16, METH_VARARGS, "bf16 or fp16 weights x fp32 activations at up to 4 rows, widened in registers."},
    {"widen", widen, METH_VARARGS, "bf16, fp16 or fp8 weights to fp32 (times a scale per row), rows split over threads."},
    {"dequant", dequant, METH_VARARGS, "One 4- or 8-bit plane to scaled fp32, rows split over threads."},
    {"gather_rows", gather_rows, METH_VARARGS, "Rows of packed 1-, 2-, 4- or 8-bit codes, dequantised (lookups)."},
    {"has_avx2", has_avx2, METH_NOARGS, "Whether this CPU runs the AVX2 path."},
    {"feature_bits", feature_bits, METH_NOARGS, "cpuid's features (cpu.FEATURES order, one bit each), or None."},
    {"identity", identity, METH_NOARGS, "cpuid's (name, vendor, family, model, stepping), or None."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lowbit", "Low-bit GEMV (AVX2 and portable C).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__lowbit(void) { return PyModule_Create(&module); }
