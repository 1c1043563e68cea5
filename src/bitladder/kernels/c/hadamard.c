/* Block Walsh-Hadamard transform of float32 rows: y = x @ blockdiag(H_b, H_b, ...) / sqrt(b), b a power of two.
 *
 * The run-time rotation of QuaRot-style layers (nn/rotated.py). As a matmul it costs b multiply-adds per element
 * (at b = 64, half the integer GEMM's work on MiniLM); the butterflies cost log2(b) additions, in one pass over
 * the row while it sits in L1. The stages run in a fixed order (distance 1, 2, 4, ... b/2), each a + c and a - c
 * exactly as written, then one multiplication by the float32 1/sqrt(b): the AVX2 path, the portable path and
 * the PyTorch reference (kernels/hadamard.py) give the same bits.
 *
 * Both grids quantise with quantize_per_tensor's single rounding on x86, nearbyint(fma(v, 1 / step, zp)), so their
 * codes are the kernels' tensor operations' bits. static_codes is the static grid of kernels/static_w8a8.py on rows
 * scaled by the input scale, rotated or not, and clamped, in one pass (only one byte per element written), the codes
 * split into the [lo; hi] rows of oneDNN's GEMM on CPUs without VNNI where asked. token_codes does the per-token
 * grid of kernels/onednn_w8a8.py on the same rows, mostly in one pass (see there). fwht_rows leaves the rotated
 * rows divided by their largest magnitude, as floats (the input fbgemm's per-call GEMM quantises itself).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BL_X86 1
#endif

static void row_portable(const float *x, float *y, int64_t k, int64_t b, float norm) {
    if (y != x) memcpy(y, x, (size_t)k * sizeof(float)); /* made_row rotates x * s in place */
    for (int64_t base = 0; base < k; base += b)
        for (int64_t h = 1; h < b; h <<= 1)
            for (int64_t i = base; i < base + b; i += 2 * h)
                for (int64_t j = i; j < i + h; j++) {
                    const float a = y[j], c = y[j + h];
                    y[j] = a + c;
                    y[j + h] = a - c;
                }
    for (int64_t j = 0; j < k; j++) y[j] = y[j] * norm;
}

/* static_codes' grid: v = x * s, divided by div unless it is 1 (token_codes: the row's absmax), clamped to
 * [lo, hi] if clamp; code = clamp(nearbyint(fma(v, inv, zp)), 0, 255), the single rounding of
 * quantize_per_tensor on x86 (fbgemm's fused multiply-add) */
typedef struct {
    float lo, hi, inv, zp, div;
    int clamp;
} Static;

#ifdef BL_X86
#define AVX2 __attribute__((target("avx2")))

/* distances 1, 2 and 4 inside one vector: the partner comes from a permute, the sum lands where the lane's bit
 * is 0 and the difference (partner - self: the lower element minus the upper) where it is 1 */
AVX2 static inline __m256 inlane(__m256 v) {
    __m256 s = _mm256_permute_ps(v, 0xB1); /* [1, 0, 3, 2] */
    v = _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xAA);
    s = _mm256_permute_ps(v, 0x4E); /* [2, 3, 0, 1] */
    v = _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xCC);
    s = _mm256_permute2f128_ps(v, v, 0x01);
    return _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), 0xF0);
}

/* a block of 8 * NV floats in registers: one load, the stages, the norm, one store. Each stage is NV / 2 pairs
 * (j, j + h), a constant count, so GCC unrolls every loop: left rolled, it kept v[] on the stack */
#define BL_BLOCK(NV)                                                                                   \
    AVX2 static inline void block##NV(const float *x, float *y, __m256 nv) {                           \
        __m256 v[NV];                                                                                  \
        _Pragma("GCC unroll 8") for (int i = 0; i < NV; i++) v[i] = inlane(_mm256_loadu_ps(x + 8 * i));  \
        _Pragma("GCC unroll 8") for (int h = 1; h < NV; h <<= 1)                                       \
            _Pragma("GCC unroll 8") for (int p = 0; p < NV / 2; p++) {                                 \
                const int j = p / h * 2 * h + p % h;                                                   \
                const __m256 a = v[j], c = v[j + h];                                                   \
                v[j] = _mm256_add_ps(a, c);                                                            \
                v[j + h] = _mm256_sub_ps(a, c);                                                        \
            }                                                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < NV; i++)                                           \
            _mm256_storeu_ps(y + 8 * i, _mm256_mul_ps(v[i], nv));                                      \
    }
BL_BLOCK(1)
BL_BLOCK(2)
BL_BLOCK(4)
BL_BLOCK(8)

AVX2 static void row_avx2(const float *x, float *y, int64_t k, int64_t b, float norm) {
    const __m256 nv = _mm256_set1_ps(norm);
    if (b <= 64) {
        for (int64_t base = 0; base < k; base += b) {
            if (b == 8) block1(x + base, y + base, nv);
            else if (b == 16) block2(x + base, y + base, nv);
            else if (b == 32) block4(x + base, y + base, nv);
            else block8(x + base, y + base, nv);
        }
        return;
    }
    for (int64_t base = 0; base < k; base += b) { /* larger blocks: stage by stage, the block in L1 */
        for (int64_t j = base; j < base + b; j += 8) _mm256_storeu_ps(y + j, inlane(_mm256_loadu_ps(x + j)));
        for (int64_t h = 8; h < b; h <<= 1)
            for (int64_t i = base; i < base + b; i += 2 * h)
                for (int64_t j = i; j < i + h; j += 8) {
                    const __m256 a = _mm256_loadu_ps(y + j), c = _mm256_loadu_ps(y + j + h);
                    _mm256_storeu_ps(y + j, _mm256_add_ps(a, c));
                    _mm256_storeu_ps(y + j + h, _mm256_sub_ps(a, c));
                }
        for (int64_t j = base; j < base + b; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), nv));
    }
}

/* y[j] / a for whole vectors; returns where the scalar tail starts */
AVX2 static int64_t divide_avx2(float *y, int64_t k, float a) {
    const __m256 av = _mm256_set1_ps(a);
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) _mm256_storeu_ps(y + j, _mm256_div_ps(_mm256_loadu_ps(y + j), av));
    return j;
}

/* of y, or of y * s where s is given (the products static_row makes again) */
AVX2 static void extremes_avx2(const float *y, const float *s, int64_t k, float *hi, float *lo) {
    __m256 h = s ? _mm256_mul_ps(_mm256_loadu_ps(y), _mm256_loadu_ps(s)) : _mm256_loadu_ps(y), l = h;
    for (int64_t j = 8; j < k; j += 8) {
        const __m256 v = s ? _mm256_mul_ps(_mm256_loadu_ps(y + j), _mm256_loadu_ps(s + j)) : _mm256_loadu_ps(y + j);
        h = _mm256_max_ps(h, v);
        l = _mm256_min_ps(l, v);
    }
    float hs[8], ls[8];
    _mm256_storeu_ps(hs, h);
    _mm256_storeu_ps(ls, l);
    *hi = hs[0];
    *lo = ls[0];
    for (int t = 1; t < 8; t++) {
        *hi = hs[t] > *hi ? hs[t] : *hi;
        *lo = ls[t] < *lo ? ls[t] : *lo;
    }
}

/* static_row for whole groups of 32; returns where the scalar tail starts */
__attribute__((target("avx2,fma"))) static int64_t static_row_avx2(const float *x, const float *s, uint8_t *q,
                                                                  uint8_t *top, int64_t k, const Static *p) {
    const __m256 lv = _mm256_set1_ps(p->lo), hv = _mm256_set1_ps(p->hi), inv = _mm256_set1_ps(p->inv),
                 zp = _mm256_set1_ps(p->zp), c0 = _mm256_setzero_ps(), c1 = _mm256_set1_ps(255.0f),
                 dv = _mm256_set1_ps(p->div);
    const int divide = p->div != 1.0f;
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), low7 = _mm256_set1_epi8(127),
                  one = _mm256_set1_epi8(1);
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __m256i a[4];
        for (int t = 0; t < 4; t++) {
            __m256 v = _mm256_loadu_ps(x + j + 8 * t);
            if (s) v = _mm256_mul_ps(v, _mm256_loadu_ps(s + j + 8 * t));
            if (divide) v = _mm256_div_ps(v, dv);
            if (p->clamp) v = _mm256_min_ps(hv, _mm256_max_ps(lv, v)); /* a NaN passes, as in the scalar path */
            __m256 c = _mm256_round_ps(_mm256_fmadd_ps(v, inv, zp), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            a[t] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(c, c0), c1));
        }
        __m256i w = _mm256_packus_epi16(_mm256_packs_epi32(a[0], a[1]), _mm256_packs_epi32(a[2], a[3]));
        w = _mm256_permutevar8x32_epi32(w, order);
        if (top) { /* the [lo; hi] split: bit 7 of each byte, shifted in 16-bit lanes and masked to one bit */
            _mm256_storeu_si256((__m256i *)(top + j), _mm256_and_si256(_mm256_srli_epi16(w, 7), one));
            w = _mm256_and_si256(w, low7);
        }
        _mm256_storeu_si256((__m256i *)(q + j), w);
    }
    return j;
}
#endif

static int cpu_avx2(void) {
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static int cpu_fma(void) {
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* quantize_per_tensor's rounding on this CPU, fbgemm's: one (its fused multiply-add) with AVX2 and FMA, else two
 * (its scalar v * inv + zp; -ffp-contract=off keeps them two); measured on an emulated Nehalem, notes.md */
static int torch_fuses(void) { return cpu_avx2() && cpu_fma(); }

static inline void extremes(const float *y, const float *s, int64_t k, float *hi, float *lo) {
    float h = s ? y[0] * s[0] : y[0], l = h;
    for (int64_t j = 1; j < k; j++) {
        const float v = s ? y[j] * s[j] : y[j];
        h = v > h ? v : h;
        l = v < l ? v : l;
    }
    *hi = h;
    *lo = l;
}

/* a row's scale on the per-token grids: max(max y, -min y), at least 1e-30 (as the PyTorch paths clamp it) */
static inline float magnitude(float hi, float lo) {
    const float a = hi > -lo ? hi : -lo;
    return a > 1e-30f ? a : 1e-30f;
}

/* the vector or the portable path of each step, as `vec` says (both give the same bits) */
static void rotate_row(const float *x, float *row, int64_t k, int64_t b, float norm, int vec) {
#ifdef BL_X86
    if (vec) {
        row_avx2(x, row, k, b, norm);
        return;
    }
#endif
    row_portable(x, row, k, b, norm);
}

static void row_extremes(const float *y, const float *s, int64_t k, float *hi, float *lo, int vec) {
#ifdef BL_X86
    if (vec) {
        extremes_avx2(y, s, k, hi, lo);
        return;
    }
#endif
    extremes(y, s, k, hi, lo);
}

/* fwht(x, y, m, k, b, norm, simd, threads): x and y (m, k) float32, b a power of two dividing k */
static PyObject *fwht(PyObject *self, PyObject *args) {
    Py_buffer x, y;
    Py_ssize_t m, k, b;
    float norm;
    int simd, threads;
    if (!PyArg_ParseTuple(args, "y*w*nnnfii", &x, &y, &m, &k, &b, &norm, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (b < 1 || (b & (b - 1)) || k % b || x.len < (Py_ssize_t)(m * k * 4) || y.len < (Py_ssize_t)(m * k * 4)) {
        PyErr_SetString(PyExc_ValueError, "hadamard.fwht: b must be a power of two dividing k, buffers (m, k)");
        goto done;
    }
    /* the vector path needs whole vectors: blocks of 8 or more */
    const int vec = simd && b >= 8 && cpu_avx2();
    const float *xs = x.buf;
    float *ys = y.buf;
    const int parts = threads < 1 ? 1 : threads;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1 && m * k >= 65536)
    for (int64_t r = 0; r < m; r++) rotate_row(xs + r * k, ys + r * k, k, b, norm, vec);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return ret;
}

static void divide_row(float *y, int64_t k, float a, int vec) {
    int64_t j = 0;
#ifdef BL_X86
    if (vec) j = divide_avx2(y, k, a);
#else
    (void)vec;
#endif
    for (; j < k; j++) y[j] = y[j] / a;
}

/* the row a grid quantises: x itself, or x * s, then rotated if b > 1 (in row) */
static const float *made_row(const float *x, const float *s, float *row, int64_t k, int64_t b, float norm,
                              int vrot) {
    const float *v = x;
    if (s) {
        for (int64_t j = 0; j < k; j++) row[j] = x[j] * s[j];
        v = row;
    }
    if (b > 1) {
        rotate_row(v, row, k, b, norm, vrot);
        v = row;
    }
    return v;
}

/* fwht_rows(x, s, y, r, m, k, b, norm, simd, threads): per row, y = (x * s) @ H_b (s empty: x; b = 1: no H)
 * divided by r = max(max y, -min y), at least 1e-30: the rows of the per-token grid on fbgemm's per-call GEMM
 * (kernels/fbgemm_w8a8.py), made and divided while each row sits in L1. IEEE division, as torch's. */
static PyObject *fwht_rows(PyObject *self, PyObject *args) {
    Py_buffer x, sb, y, rb;
    Py_ssize_t m, k, b;
    float norm;
    int simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*w*w*nnnfii", &x, &sb, &y, &rb, &m, &k, &b, &norm, &simd, &threads))
        return NULL;
    PyObject *ret = NULL;
    if (b < 1 || (b & (b - 1)) || k % b || k < 1 || m < 0 || x.len < (Py_ssize_t)(m * k * 4)
        || (sb.len != 0 && sb.len < (Py_ssize_t)(k * 4)) || y.len < (Py_ssize_t)(m * k * 4)
        || rb.len < (Py_ssize_t)(m * 4)) {
        PyErr_SetString(PyExc_ValueError, "hadamard.fwht_rows: b must be a power of two dividing k, buffers "
                                          "(m, k), (k,) or empty, (m, k) and (m,)");
        goto done;
    }
    const int avx2 = simd && cpu_avx2();
    const int vrot = avx2 && b >= 8, vrow = avx2 && k % 8 == 0;
    const float *xs = x.buf, *s = sb.len ? (const float *)sb.buf : NULL;
    float *ys = y.buf, *rs = rb.buf;
    const int parts = threads < 1 ? 1 : threads;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1 && m * k >= 65536)
    for (int64_t r = 0; r < m; r++) {
        float hi, lo, *row = ys + r * k;
        const float *v = made_row(xs + r * k, s, row, k, b, norm, vrot);
        if (v != row) memcpy(row, v, (size_t)k * sizeof(float)); /* neither scaled nor rotated */
        row_extremes(row, NULL, k, &hi, &lo, vrow);
        const float a = magnitude(hi, lo);
        rs[r] = a;
        divide_row(row, k, a, vrow);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&y);
    PyBuffer_Release(&rb);
    return ret;
}

/* one row of static_codes: the vector path for whole groups of 32, then the same operations one by one */
static void static_row(const float *x, const float *s, uint8_t *q, uint8_t *top, int64_t k, const Static *p,
                       int vec) {
    int64_t j = 0;
#ifdef BL_X86
    if (vec) j = static_row_avx2(x, s, q, top, k, p);
#else
    (void)vec;
#endif
    const int fused = torch_fuses();
    for (; j < k; j++) {
        float v = s ? x[j] * s[j] : x[j];
        if (p->div != 1.0f) v = v / p->div;
        if (p->clamp) v = v < p->lo ? p->lo : (v > p->hi ? p->hi : v);
        const float c = nearbyintf(fused ? fmaf(v, p->inv, p->zp) : v * p->inv + p->zp);
        const uint8_t code = (uint8_t)(c > 0.0f ? (c < 255.0f ? c : 255.0f) : 0.0f); /* NaN: 0, as vmaxps gives */
        if (top) {
            top[j] = code >> 7;
            q[j] = code & 127;
        } else {
            q[j] = code;
        }
    }
}

/* the shared grid of `levels` steps over [min(L, 0), max(H, 0)], in double as kernels/base.uint8_grid computes it */
static void token_grid(float L, float H, int levels, double *scale, int *zp) {
    const double lo = L < 0.0f ? (double)L : 0.0, hi = H > 0.0f ? (double)H : 0.0;
    *scale = (hi - lo) / levels > 1e-30 ? (hi - lo) / levels : 1e-30;
    const double z = nearbyint(-lo / *scale);
    *zp = (int)(z < 0 ? 0 : (z > levels ? levels : z));
}

/* token_codes(x, s, q, r, m, k, b, norm, levels, simd, threads) -> (scale, zp): the per-token grid of
 * kernels/onednn_w8a8.py on v = x * s (s empty: x), rotated by blocks of b unless b is 1. Per row
 * r = max(max v, -min v) (at least 1e-30); the rows share one grid of `levels` steps over
 * [min(min_rows lo / r, 0), max(max_rows hi / r, 0)] (token_grid); q = clamp(nearbyint(fma(v / r, 1 / scale, zp)),
 * 0, 255), quantize_per_tensor's rounding (torch_fuses): the codes of the tensor operations
 * (hadamard.token_reference).
 * The grid is known only after every row, but each row divided by its own r reaches +1 or -1, so when one row's
 * extreme is positive and another's negative it is the grid of [-1, 1]: the first pass quantises on that one while
 * the row is in L1, and a second pass (which makes the row again: cheaper than keeping it as floats) runs only
 * when the rows' grid is another. */
static PyObject *token_codes(PyObject *self, PyObject *args) {
    Py_buffer x, sb, q, rb;
    Py_ssize_t m, k, b;
    float norm;
    int levels, simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*w*w*nnnfiii", &x, &sb, &q, &rb, &m, &k, &b, &norm, &levels, &simd, &threads))
        return NULL;
    PyObject *ret = NULL;
    if (b < 1 || (b & (b - 1)) || k % b || k < 1 || m < 1 || levels < 1 || levels > 255
        || x.len < (Py_ssize_t)(m * k * 4) || (sb.len != 0 && sb.len < (Py_ssize_t)(k * 4))
        || q.len < (Py_ssize_t)(m * k) || rb.len < (Py_ssize_t)(m * 4)) {
        PyErr_SetString(PyExc_ValueError, "hadamard.token_codes: b must be a power of two dividing k, buffers "
                                          "(m, k), (k,) or empty, (m, k) and (m,), 1 <= levels <= 255");
        goto done;
    }
    const int avx2 = simd && cpu_avx2();
    const int vrot = avx2 && b >= 8, vext = avx2 && k % 8 == 0, vq = avx2 && cpu_fma();
    const float *xs = x.buf, *s = sb.len ? (const float *)sb.buf : NULL;
    uint8_t *qs = q.buf;
    float *rs = rb.buf;
    float *nlo = malloc((size_t)m * sizeof(float)), *nhi = malloc((size_t)m * sizeof(float));
    if (!nlo || !nhi) {
        free(nlo);
        free(nhi);
        PyErr_NoMemory();
        goto done;
    }
    /* a row buffer only to rotate in: unrotated rows are read in place, their products with s made twice */
    const int parts = threads < 1 ? 1 : threads, own = b > 1;
    const float *ps = own ? NULL : s; /* the scale static_row applies */
    int failed = 0;
    double scale = 0.0, guess = 0.0;
    int zp = 0, gzp = 0, again = 1;
    token_grid(-1.0f, 1.0f, levels, &guess, &gzp);
    const float ginv = 1.0f / (float)guess;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(parts) if (parts > 1 && m * k >= 65536)
    {
        float *row = own ? malloc((size_t)k * sizeof(float)) : NULL;
        if (own && !row) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++) {
            if (own && !row) continue;
            float hi, lo;
            const float *v = own ? made_row(xs + r * k, s, row, k, b, norm, vrot) : xs + r * k;
            row_extremes(v, ps, k, &hi, &lo, vext);
            const float a = magnitude(hi, lo);
            rs[r] = a;
            nhi[r] = hi / a;
            nlo[r] = lo / a;
            const Static g = {0.0f, 0.0f, ginv, (float)gzp, a, 0};
            static_row(v, ps, qs + r * k, NULL, k, &g, vq);
        }
#pragma omp single
        {
            float L = nlo[0], H = nhi[0];
            for (int64_t r = 1; r < m; r++) {
                L = nlo[r] < L ? nlo[r] : L;
                H = nhi[r] > H ? nhi[r] : H;
            }
            token_grid(L, H, levels, &scale, &zp);
            again = scale != guess || zp != gzp;
        }
        const float inv = 1.0f / (float)scale;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++) {
            if ((own && !row) || !again) continue;
            const Static g = {0.0f, 0.0f, inv, (float)zp, rs[r], 0};
            const float *v = own ? made_row(xs + r * k, s, row, k, b, norm, vrot) : xs + r * k;
            static_row(v, ps, qs + r * k, NULL, k, &g, vq);
        }
        free(row);
    }
    Py_END_ALLOW_THREADS
    free(nlo);
    free(nhi);
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_BuildValue("di", scale, zp);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&q);
    PyBuffer_Release(&rb);
    return ret;
}

/* static_codes(x, s, q, m, k, b, norm, lo, hi, clamp, inv, zp, split, simd, threads): x (m, k) float32, s (k,)
 * float32 or empty (no input scale); q (m, k) uint8, or (2m, k) with split: rows 0..m-1 the codes' low seven bits,
 * rows m..2m-1 their top bit (oneDNN's [lo; hi] GEMM, kernels/static_w8a8.py). Codes are
 * clamp(nearbyint(fma(v, inv, zp)), 0, 255) of v = x * s, rotated by blocks of b (b = 1: not), clamped to [lo, hi]:
 * one pass instead of four, the rotated row made in L1 */
static PyObject *static_codes(PyObject *self, PyObject *args) {
    Py_buffer x, sb, q;
    Py_ssize_t m, k, b;
    float norm;
    Static p;
    int split, simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnfffiffiii", &x, &sb, &q, &m, &k, &b, &norm, &p.lo, &p.hi, &p.clamp,
                          &p.inv, &p.zp, &split, &simd, &threads))
        return NULL;
    p.div = 1.0f;
    PyObject *ret = NULL;
    if (m < 0 || k < 1 || b < 1 || (b & (b - 1)) || k % b || x.len < (Py_ssize_t)(m * k * 4)
        || q.len < (Py_ssize_t)((split ? 2 : 1) * m * k) || (sb.len != 0 && sb.len < (Py_ssize_t)(k * 4))
        || !(p.zp >= 0.0f && p.zp <= 255.0f)) {
        PyErr_SetString(PyExc_ValueError, "hadamard.static_codes: b must be a power of two dividing k, buffers "
                                          "(m, k), (k,) or empty, and (m, k) or (2m, k) with split; 0 <= zp <= 255");
        goto done;
    }
    const int vec = simd && cpu_avx2() && cpu_fma(), vrot = simd && cpu_avx2() && b >= 8;
    const float *xs = x.buf, *s = sb.len ? (const float *)sb.buf : NULL;
    uint8_t *qs = q.buf;
    const int parts = threads < 1 ? 1 : threads;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(parts) if (parts > 1 && m * k >= 65536)
    {
        float *row = b > 1 ? malloc((size_t)k * sizeof(float)) : NULL;
        if (b > 1 && !row) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++) {
            uint8_t *top = split ? qs + (m + r) * k : NULL;
            if (b == 1) static_row(xs + r * k, s, qs + r * k, top, k, &p, vec);
            else if (row)
                static_row(made_row(xs + r * k, s, row, k, b, norm, vrot), NULL, qs + r * k, top, k, &p, vec);
        }
        free(row);
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&q);
    return ret;
}

/* split_codes' rows: piece p of element j is nearbyint(u) + 128, then u = (u - nearbyint(u)) * 254, from
 * u = x / d; pieces at stride qs (the weight-only split of kernels/onednn_split.py, split_reference's bits) */
static void split_portable(const float *x, uint8_t *q, int64_t qs, int64_t j, int64_t k, float d, int pieces) {
    for (; j < k; j++) {
        float u = x[j] / d;
        for (int p = 0; p < pieces; p++) {
            const float a = nearbyintf(u);
            q[p * qs + j] = (uint8_t)(int)fminf(fmaxf(a + 128.0f, 0.0f), 255.0f); /* NaN: 0, as the vector path */
            u = (u - a) * 254.0f;
        }
    }
}

#ifdef BL_X86
/* 32 elements a step: four vectors carried through the pieces, each piece's 32 codes packed into one store */
AVX2 static int64_t split_avx2(const float *x, uint8_t *q, int64_t qs, int64_t k, float d, int pieces) {
    const __m256 dv = _mm256_set1_ps(d), off = _mm256_set1_ps(128.0f), sub = _mm256_set1_ps(254.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __m256 u[4];
        for (int i = 0; i < 4; i++) u[i] = _mm256_div_ps(_mm256_loadu_ps(x + j + 8 * i), dv);
        for (int p = 0; p < pieces; p++) {
            __m256i c[4];
            for (int i = 0; i < 4; i++) {
                const __m256 a = _mm256_round_ps(u[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                c[i] = _mm256_cvtps_epi32(_mm256_add_ps(a, off));
                u[i] = _mm256_mul_ps(_mm256_sub_ps(u[i], a), sub);
            }
            const __m256i w = _mm256_packus_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
            _mm256_storeu_si256((__m256i *)(q + p * qs + j), _mm256_permutevar8x32_epi32(w, perm));
        }
    }
    return j;
}
#endif

/* split_codes(x, q, r, m, k, pieces, simd, threads): x (m, k) float32, q (pieces * m, k) uint8, r (m,) float32.
 * Per row r = magnitude / 127 and u = x / r; rows p * m .. p * m + m - 1 of q hold piece p (split_portable) */
static PyObject *split_codes(PyObject *self, PyObject *args) {
    Py_buffer x, q, rb;
    Py_ssize_t m, k;
    int pieces, simd, threads;
    if (!PyArg_ParseTuple(args, "y*w*w*nniii", &x, &q, &rb, &m, &k, &pieces, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (m < 1 || k < 1 || pieces < 1 || pieces > 4 || x.len < (Py_ssize_t)(m * k * 4)
        || q.len < (Py_ssize_t)(pieces * m * k) || rb.len < (Py_ssize_t)(m * 4)) {
        PyErr_SetString(PyExc_ValueError, "hadamard.split_codes: buffers (m, k), (pieces * m, k) and (m,), "
                                          "1 <= pieces <= 4");
        goto done;
    }
    const int avx2 = simd && cpu_avx2(), vext = avx2 && k % 8 == 0;
    const float *xs = x.buf;
    uint8_t *qs = q.buf;
    float *rs = rb.buf;
    const int parts = threads < 1 ? 1 : threads;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1 && m * k >= 65536)
    for (int64_t r = 0; r < m; r++) {
        float hi, lo;
        const float *v = xs + r * k;
        row_extremes(v, NULL, k, &hi, &lo, vext);
        const float d = magnitude(hi, lo) / 127.0f;
        rs[r] = d;
        int64_t j = 0;
#ifdef BL_X86
        if (avx2) j = split_avx2(v, qs + r * k, m * k, k, d, pieces);
#endif
        split_portable(v, qs + r * k, m * k, j, k, d, pieces);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&q);
    PyBuffer_Release(&rb);
    return ret;
}

/* one output row of split_sum: piece p - 1 += piece p * inv from the top down (the row's pieces stay in L1/L2),
 * then row 0 = row 0 * rr + b; plain loops over restrict pointers that the compiler vectorises (for AVX2 in the
 * AVX2 copy) */
#define BL_SPLIT_SUM_ROW(NAME, ATTR)                                                                       \
    ATTR static void NAME(float *y, int64_t mn, int64_t n, int pieces, float rr, const float *b) {       \
        const float inv = 1.0f / 254.0f;                                                                 \
        for (int p = pieces - 1; p > 0; p--) {                                                           \
            float *restrict lo = y + (int64_t)(p - 1) * mn;                                              \
            const float *restrict hi = y + (int64_t)p * mn;                                              \
            for (int64_t j = 0; j < n; j++) lo[j] = lo[j] + hi[j] * inv;                                 \
        }                                                                                                \
        float *restrict o = y;                                                                           \
        if (b) {                                                                                         \
            const float *restrict bb = b;                                                                \
            for (int64_t j = 0; j < n; j++) o[j] = o[j] * rr + bb[j];                                    \
        } else {                                                                                         \
            for (int64_t j = 0; j < n; j++) o[j] = o[j] * rr;                                            \
        }                                                                                                \
    }
BL_SPLIT_SUM_ROW(split_sum_portable, )
#ifdef BL_X86
BL_SPLIT_SUM_ROW(split_sum_avx2, AVX2)
#endif

/* split_sum(y, r, b, m, n, pieces, simd, threads): y (pieces * m, n) float32, the split GEMM's output, r (m,),
 * b (n,) or empty; rows 0..m-1 of y become the pieces' sum in Horner's form times r, plus b (one pass) */
static PyObject *split_sum(PyObject *self, PyObject *args) {
    Py_buffer y, rb, bb;
    Py_ssize_t m, n;
    int pieces, simd, threads;
    if (!PyArg_ParseTuple(args, "w*y*y*nniii", &y, &rb, &bb, &m, &n, &pieces, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (m < 1 || n < 1 || pieces < 1 || pieces > 4 || y.len < (Py_ssize_t)(pieces * m * n * 4)
        || rb.len < (Py_ssize_t)(m * 4) || (bb.len != 0 && bb.len < (Py_ssize_t)(n * 4))) {
        PyErr_SetString(PyExc_ValueError, "hadamard.split_sum: buffers (pieces * m, n), (m,) and (n,) or empty, "
                                          "1 <= pieces <= 4");
        goto done;
    }
    const int avx2 = simd && cpu_avx2();
    float *ys = y.buf;
    const float *rs = rb.buf, *b = bb.len ? (const float *)bb.buf : NULL;
    const int parts = threads < 1 ? 1 : threads;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(parts) schedule(static) if (parts > 1 && m * n >= 65536)
    for (int64_t i = 0; i < m; i++) {
#ifdef BL_X86
        if (avx2) {
            split_sum_avx2(ys + i * n, m * n, n, pieces, rs[i], b);
            continue;
        }
#endif
        split_sum_portable(ys + i * n, m * n, n, pieces, rs[i], b);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&y);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&bb);
    return ret;
}

static PyMethodDef methods[] = {
    {"fwht_rows", fwht_rows, METH_VARARGS, "Rotated rows, each divided by its largest magnitude."},
    {"fwht", fwht, METH_VARARGS, "Block Walsh-Hadamard transform of float32 rows, rows split over threads."},
    {"token_codes", token_codes, METH_VARARGS, "Rows (rotated or not) quantised on the per-token grid."},
    {"static_codes", static_codes, METH_VARARGS, "Rows scaled, clamped and quantised on a static grid, split."},
    {"split_codes", split_codes, METH_VARARGS, "Rows as integer pieces of 8 bits for the weight-only split GEMM."},
    {"split_sum", split_sum, METH_VARARGS, "The split GEMM's pieces summed, times the row scales, plus the bias."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hadamard", "Block Walsh-Hadamard transform.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__hadamard(void) { return PyModule_Create(&module); }
