/* W8A8 on a static (calibrated) activation grid, exact on CPUs without VNNI (`static16` in lowbit.c).
 *
 * y[m, n] = float(sum_k (q[m, k] - zp) * w[n, k]) * sc[n] (+ bias[n]) (+ x[m, idx[j]] * side[n, j] for j in order)
 *
 * q are the uint8 codes of the layer's grid (all 256 of them), w signed 8-bit weight codes, sc[n] the activation
 * step times the weight's scale. Without VNNI the u8 x s8 pair sums of vpmaddubsw saturate 16 bits on such
 * operands (2 * 255 * 127), so oneDNN runs them split in two GEMMs. Here both operands are widened to 16 bits and
 * vpmaddwd adds each pair of products into 32 bits: two multiply instructions per 32 products, as many as the
 * u8 x s8 path needs (vpmaddubsw, then vpmaddwd against ones), and nothing saturates (|q - zp| <= 255,
 * |w| <= 128). Vectorised across outputs as the tiles are: a 32-bit lane is an output, weights are columns of
 * eight outputs holding two consecutive codes per output, and a pair of activations is broadcast.
 *
 * The integer sums are exact, so the AVX2 and the portable path give the same bits (and those of the reference in
 * kernels/c_static.py): one conversion, one multiply, one add per output, then the outlier channels' float
 * products (nn/outliers.py) one multiply and one add each, while the output is still in a register: added to the
 * finished output by a separate GEMM they cost more than the channels' share of the work (a read and write of
 * the whole output, made by other threads). */

typedef struct {
    const int8_t *w;       /* (nc, kp / 2, 2 L): column c, pair p, lane l, code j = w[L c + l, 2 p + j], L lanes */
    const float *sc;       /* (nc * L) */
    const float *bias;     /* (nc * L) or NULL */
    const float *side;     /* (nc, ko, L) the outlier channels' float weights, or NULL */
    const float *xo;       /* (m, ko) those channels of the float input */
    const uint8_t *q;      /* (m, k) codes */
    int16_t *xw;           /* (m, kp) q - zp, zero past k */
    float *y;              /* (m, n) */
    int64_t m, n, nc, k, kp, ko;
    int zp;
    int lanes; /* outputs per column: 8 (the AVX2 and portable layout) or 16 (AVX-512's) */
} SJob;

#ifndef S16_ROWS
#define S16_ROWS 64 /* rows per chunk: 64 x kp 16-bit codes stay in L2 while the columns pass over them */
#endif
#ifndef S16_TM /* register tile: activation rows x columns of eight outputs (sixteen ymm registers) */
#define S16_TM 4
#define S16_TN 2
#endif
#ifndef S16Z_TM /* AVX-512's register tile: activation rows x columns of sixteen outputs (static16_bw.h) */
#define S16Z_TM 6
#define S16Z_RZ 3
#endif

/* one output: the reference's arithmetic */
static inline float s16_out(const SJob *J, int64_t r, int64_t n, int32_t acc) {
    float v = (float)acc * J->sc[n];
    if (J->bias) v = v + J->bias[n];
    const int L = J->lanes;
    for (int64_t j = 0; j < J->ko; j++) v = v + J->xo[r * J->ko + j] * J->side[((n / L) * J->ko + j) * L + n % L];
    return v;
}

static void s16_portable(const SJob *J, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    for (int64_t c = c0; c < c1; c++)
        for (int lane = 0; lane < J->lanes && c * J->lanes + lane < J->n; lane++)
            for (int64_t r = r0; r < r1; r++) {
                const int16_t *x = J->xw + r * J->kp;
                const int64_t L2 = 2 * J->lanes;
                const int8_t *w = J->w + c * J->kp * J->lanes + 2 * lane;
                int32_t acc = 0;
                for (int64_t p = 0; p < J->kp / 2; p++) acc += w[L2 * p] * x[2 * p] + w[L2 * p + 1] * x[2 * p + 1];
                J->y[r * J->n + c * J->lanes + lane] = s16_out(J, r, c * J->lanes + lane, acc);
            }
}

#ifdef BL_X86
/* rows r0 .. r0 + RM - 1 against columns c0 .. c0 + RN - 1 over all of K */
AVX2 static inline __attribute__((always_inline)) void s16_tile(const SJob *J, int64_t c0, int64_t r0, const int RM,
                                                                const int RN) {
    __m256i a[S16_TM][S16_TN];
    const int16_t *xr[S16_TM];
    const int8_t *wc[S16_TN];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
        xr[i] = J->xw + (r0 + i) * J->kp;
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) a[i][t] = _mm256_setzero_si256();
    }
#pragma GCC unroll 8
    for (int t = 0; t < RN; t++) wc[t] = J->w + (c0 + t) * J->kp * 8;
#pragma GCC unroll 4
    for (int64_t p = 0; p < J->kp / 2; p++) {
        __m256i wv[S16_TN];
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) wv[t] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wc[t] + 16 * p)));
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            int32_t two;
            memcpy(&two, xr[i] + 2 * p, 4);
            const __m256i x2 = _mm256_set1_epi32(two);
#pragma GCC unroll 8
            for (int t = 0; t < RN; t++) a[i][t] = _mm256_add_epi32(_mm256_madd_epi16(wv[t], x2), a[i][t]);
        }
    }
    __m256 f[S16_TM][S16_TN];
#pragma GCC unroll 8
    for (int t = 0; t < RN; t++) {
        const __m256 scv = _mm256_loadu_ps(J->sc + (c0 + t) * 8);
        const __m256 bv = J->bias ? _mm256_loadu_ps(J->bias + (c0 + t) * 8) : _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            f[i][t] = _mm256_mul_ps(_mm256_cvtepi32_ps(a[i][t]), scv);
            if (J->bias) f[i][t] = _mm256_add_ps(f[i][t], bv);
        }
    }
    /* the outlier channels one at a time over the whole tile (each output still adds them in channel order) */
    const float *xo[S16_TM], *so[S16_TN];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) xo[i] = J->xo + (r0 + i) * J->ko;
#pragma GCC unroll 8
    for (int t = 0; t < RN; t++) so[t] = J->side + (c0 + t) * J->ko * 8;
    for (int64_t j = 0; j < J->ko; j++) {
        __m256 sv[S16_TN];
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) sv[t] = _mm256_loadu_ps(so[t] + 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            const __m256 xv = _mm256_set1_ps(xo[i][j]);
#pragma GCC unroll 8
            for (int t = 0; t < RN; t++) f[i][t] = _mm256_add_ps(f[i][t], _mm256_mul_ps(xv, sv[t]));
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < RN; t++)
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) store8(J->y + (r0 + i) * J->n + (c0 + t) * 8, f[i][t], J->n - (c0 + t) * 8);
}

/* columns c0 .. c1 (a multiple of S16_TN apart but for the last) against rows r0 .. r1 */
AVX2 static void s16_avx2(const SJob *J, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    for (int64_t m0 = r0; m0 < r1; m0 += S16_ROWS) {
        const int64_t m1 = m0 + S16_ROWS < r1 ? m0 + S16_ROWS : r1;
        for (int64_t c = c0; c < c1; c += S16_TN) {
            int64_t r = m0;
            if (c1 - c >= S16_TN) {
                for (; r + S16_TM <= m1; r += S16_TM) s16_tile(J, c, r, S16_TM, S16_TN);
                if (S16_TM == 4 && m1 - r == 3) { s16_tile(J, c, r, 3, S16_TN); r = m1; } /* one tile for the last */
                if (S16_TM == 4 && m1 - r == 2) { s16_tile(J, c, r, 2, S16_TN); r = m1; }
                for (; r < m1; r++) s16_tile(J, c, r, 1, S16_TN);
            } else {
                for (; r + S16_TM <= m1; r += S16_TM) s16_tile(J, c, r, S16_TM, 1);
                for (; r < m1; r++) s16_tile(J, c, r, 1, 1);
            }
        }
    }
}

#include "static16_bw.h"
#endif

/* one thread's share: whole tiles of columns where there are enough for every thread, else rows */
static void s16_part(const SJob *J, int simd, int part, int parts) {
    const int64_t tn = simd == 2 ? S16Z_RZ : simd ? S16_TN : 1, units = (J->nc + tn - 1) / tn;
    int64_t c0 = 0, c1 = J->nc, r0 = 0, r1 = J->m;
    if (units >= parts) {
        c0 = units * part / parts * tn;
        c1 = units * (part + 1) / parts * tn;
        if (c1 > J->nc) c1 = J->nc;
    } else {
        r0 = J->m * part / parts;
        r1 = J->m * (part + 1) / parts;
    }
    if (c0 >= c1 || r0 >= r1) return;
#ifdef BL_X86
    if (simd == 2) { s16_bw(J, c0, c1, r0, r1); return; }
    if (simd) { s16_avx2(J, c0, c1, r0, r1); return; }
#endif
    s16_portable(J, c0, c1, r0, r1);
}

/* static16(w, sc, bias_or_None, q, y, m, n, k, kp, zp, simd, lanes, threads[, x, idx, side]): simd 2 takes the
 * AVX-512 BW path (lanes 16), 1 the AVX2 one (lanes 8) where the CPU has it, 0 the portable one (either layout);
 * x (m, k) float32, idx (ko,) int64 and side (nc, ko, lanes) float32 add the outlier channels' products */
static PyObject *static16(PyObject *self, PyObject *args) {
    Py_buffer w, sc, q, y, bias = {0}, x = {0}, idx = {0}, side = {0};
    PyObject *bobj;
    Py_ssize_t m, n, k, kp;
    int zp, simd, lanes, threads;
    if (!PyArg_ParseTuple(args, "y*y*Oy*w*nnnniiii|y*y*y*", &w, &sc, &bobj, &q, &y, &m, &n, &k, &kp, &zp, &simd,
                          &lanes, &threads, &x, &idx, &side))
        return NULL;
    const int has_bias = bobj != Py_None;
    PyObject *ret = NULL;
    float *xo = NULL;
    if (has_bias && PyObject_GetBuffer(bobj, &bias, PyBUF_SIMPLE) != 0) goto done;
    if (simd < 0 || simd > 2 || (lanes != 8 && lanes != 16) || (simd == 2 && lanes != 16)
        || (simd == 1 && lanes != 8)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.static16: simd 2 takes 16 lanes, 1 takes 8, 0 either");
        goto done;
    }
    const int64_t nc = (n + lanes - 1) / lanes, ko = idx.obj ? idx.len / 8 : 0;
    const int64_t *ix = idx.obj ? idx.buf : NULL;
    if (idx.obj && (!side.obj || side.len < (Py_ssize_t)(nc * ko * lanes * 4) || x.len < (Py_ssize_t)(m * k * 4))) {
        PyErr_SetString(PyExc_ValueError, "lowbit.static16: the side product needs x (m, k) and side (nc, ko, 8)");
        goto done;
    }
    for (int64_t j = 0; j < ko; j++)
        if (ix[j] < 0 || ix[j] >= k) {
            PyErr_Format(PyExc_IndexError, "outlier channel %lld is out of range for %lld inputs", (long long)ix[j],
                         (long long)k);
            goto done;
        }
    /* |sum| <= 255 * 128 * kp must stay below 2^31 */
    if (m < 0 || n < 0 || k < 0 || kp < k || kp % 2 || kp > 65536 || zp < 0 || zp > 255
        || w.len < nc * kp * lanes || sc.len < (Py_ssize_t)(nc * lanes * 4) || q.len < m * k
        || y.len < (Py_ssize_t)(m * n * 4) || (has_bias && bias.len < (Py_ssize_t)(nc * lanes * 4))) {
        PyErr_SetString(PyExc_ValueError, "lowbit.static16: buffer sizes do not fit");
        goto done;
    }
    if ((simd == 2 && !cpu_avx512bw()) || (simd == 1 && !cpu_avx2())) simd = 0;
    if (threads < 1) threads = 1;
    int16_t *xw = m > 0 ? aligned_alloc(32, (size_t)(m * kp * 2 + 32) / 32 * 32) : NULL;
    xo = m > 0 && ko > 0 ? malloc((size_t)(m * ko) * sizeof(float)) : NULL;
    if (m > 0 && (!xw || (ko > 0 && !xo))) { free(xw); PyErr_NoMemory(); goto done; }
    SJob J = {w.buf, sc.buf, has_bias ? bias.buf : NULL, ko ? side.buf : NULL, xo, q.buf, xw, (float *)y.buf,
              m, n, nc, k, kp, ko, zp, lanes};
    const int64_t tn = simd == 2 ? S16Z_RZ : simd ? S16_TN : 1, units = (nc + tn - 1) / tn;
    int parts = (int64_t)threads > (units > m ? units : m) ? (int)(units > m ? units : m) : threads;
    if (m * n * kp < 262144) parts = 1; /* small work: one thread beats waking the pool */
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(parts > 1 ? parts : 1)
    {
#pragma omp for schedule(static)
        for (Py_ssize_t r = 0; r < m; r++) {
            const uint8_t *src = J.q + r * k;
            int16_t *dst = xw + r * kp;
            for (int64_t i = 0; i < k; i++) dst[i] = (int16_t)((int)src[i] - zp);
            for (int64_t i = k; i < kp; i++) dst[i] = 0;
            for (int64_t j = 0; j < ko; j++) xo[r * ko + j] = ((const float *)x.buf)[r * k + ix[j]];
        }
#pragma omp for schedule(static)
        for (int part = 0; part < (parts > 1 ? parts : 1); part++) s16_part(&J, simd, part, parts > 1 ? parts : 1);
    }
    Py_END_ALLOW_THREADS
    free(xw);
    ret = Py_None;
    Py_INCREF(ret);
done:
    free(xo);
    PyBuffer_Release(&w); PyBuffer_Release(&sc); PyBuffer_Release(&q); PyBuffer_Release(&y);
    if (has_bias && bias.obj) PyBuffer_Release(&bias);
    if (x.obj) PyBuffer_Release(&x);
    if (idx.obj) PyBuffer_Release(&idx);
    if (side.obj) PyBuffer_Release(&side);
    return ret;
}
