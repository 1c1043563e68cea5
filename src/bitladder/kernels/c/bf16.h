/* Float weights of 16 or 8 bits (bf16, fp16, fp8 e4m3 or e5m2) x fp32 activations at a few rows, included by
 * lowbit.c: y[m, n] = sum_k x[m, k] * float(w[n, k]), each weight widened in registers, exactly, never stored as
 * fp32: a bf16's 16 bits are a float's high half; fp16 by vcvtph2ps (F16C); e5m2 is an fp16's high byte; e4m3's
 * seven low bits shifted left by 7 are an fp16 of 2^-8 its value, subnormals included (the caller multiplies the
 * output by 256; e4m3fn's NaN reads as 480, which quantisers never store). The products of a row add up in sixteen
 * lanes (lane k % 16, fused multiply-add in k order), then a fixed tree (lanes i and i + 8, then i + 4, i + 2,
 * i + 1), on every path: AVX-512, AVX2 (two registers of eight lanes) and portable (`fmaf`) give the same bits. A
 * row of weights is read once for all the activation rows. */

#define BF16_ROWS 4 /* activation rows a call takes (more: the caller converts panels and runs the fp32 GEMM) */

enum { WIDE_BF16, WIDE_FP16, WIDE_E4M3, WIDE_E5M2 }; /* the weights' format (`fmt`) */

typedef struct {
    const uint8_t *w; const float *x; float *y;
    int64_t m, n, k;
    int pf2; /* an Intel CPU: the next block's rows into L2 as a block is read */
    int fmt;
} BJob;

static inline int wide_bytes(int fmt) { return fmt >= WIDE_E4M3 ? 1 : 2; }

static inline float bf16_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* weight i of a row as a float (e4m3 at 2^-8 its value) */
static inline float wide_float(const uint8_t *wr, int64_t i, int fmt) {
    if (fmt == WIDE_E4M3) return half_to_float((uint16_t)(((wr[i] & 0x7F) << 7) | ((wr[i] & 0x80) << 8)));
    if (fmt == WIDE_E5M2) return half_to_float((uint16_t)(wr[i] << 8));
    uint16_t h;
    memcpy(&h, wr + 2 * i, 2);
    return fmt == WIDE_FP16 ? half_to_float(h) : bf16_float(h);
}

static inline float bf16_tree(float *l) { /* lanes i + 8, then + 4, + 2, + 1 */
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] = l[i] + l[i + w];
    return l[0];
}

/* the tail of a row (k0 .. k - 1) into lanes k % 16, as the vector loops would have */
static inline void bf16_tail(const uint8_t *wr, const float *xr, int64_t k0, int64_t k, float *lanes, int fmt) {
    for (int64_t i = k0; i < k; i++) lanes[i % 16] = fmaf(xr[i], wide_float(wr, i, fmt), lanes[i % 16]);
}

/* weight row n */
static inline const uint8_t *wide_row(const BJob *J, int64_t n) { return J->w + n * J->k * wide_bytes(J->fmt); }

static void bf16_portable(const BJob *J, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++)
        for (int64_t r = 0; r < J->m; r++) {
            float lanes[16] = {0};
            bf16_tail(wide_row(J, n), J->x + r * J->k, 0, J->k, lanes, J->fmt);
            J->y[r * J->n + n] = bf16_tree(lanes);
        }
}

#ifdef BL_X86
#ifndef BL_BPF
#define BL_BPF 1 /* an Intel CPU asks for the next block's rows into L2 as it reads (0: hardware prefetch alone) */
#endif
#ifndef BF16_AHEAD
#define BF16_AHEAD 1 /* blocks of rows ahead (1, 2 and 4 alike: notes.md, 'bf16 weights') */
#endif
/* weight rows are read NB at a time; the line at element i of each is asked for BF16_AHEAD blocks ahead, into L2 */
#define BF16_AHEAD_LINE(J, n, NB, b, i, ahead, ES)                                                             \
    if ((ahead) && !(((i) * (ES)) & 63))                                                                       \
    _mm_prefetch((const char *)((J)->w + (((n) + BF16_AHEAD * (NB) + (b)) * (J)->k + (i)) * (ES)), _MM_HINT_T1)

/* eight 16-bit halves of fp16 bits from eight fp8 bytes */
AVX2 static inline __m128i fp8_halves(__m128i b8, const int fmt) {
    const __m128i u = _mm_cvtepu8_epi16(b8);
    if (fmt == WIDE_E5M2) return _mm_slli_epi16(u, 8);
    return _mm_or_si128(_mm_slli_epi16(_mm_and_si128(u, _mm_set1_epi16(0x7F)), 7),
                        _mm_slli_epi16(_mm_and_si128(u, _mm_set1_epi16(0x80)), 8));
}

/* eight weights from element i of row wr */
AVX2 static inline __m256 wide8(const uint8_t *wr, int64_t i, const int fmt) {
    if (fmt >= WIDE_E4M3) return _mm256_cvtph_ps(fp8_halves(_mm_loadl_epi64((const __m128i *)(wr + i)), fmt));
    const __m128i h = _mm_loadu_si128((const __m128i *)(wr + 2 * i));
    return fmt == WIDE_FP16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* weight rows n .. n + NB - 1 against every activation row: NB rows' sums in flight hide the FMA's latency (each
 * output's own sum keeps its order) */
AVX2 static inline __attribute__((always_inline)) void bf16_avx2_rows(const BJob *J, int64_t n, const int NB,
                                                                       const int fmt) {
    const int64_t k16 = J->k / 16 * 16;
    const int es = wide_bytes(fmt);
    __m256 a0[2][BF16_ROWS], a1[2][BF16_ROWS];
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) a0[b][r] = a1[b][r] = _mm256_setzero_ps();
    const int ahead = BL_BPF && J->pf2 && n + (BF16_AHEAD + 1) * NB <= J->n;
    for (int64_t i = 0; i < k16; i += 16)
        for (int b = 0; b < NB; b++) {
            BF16_AHEAD_LINE(J, n, NB, b, i, ahead, es);
            const uint8_t *wr = J->w + (n + b) * J->k * es;
            const __m256 w0 = wide8(wr, i, fmt), w1 = wide8(wr, i + 8, fmt);
            for (int r = 0; r < J->m; r++) {
                a0[b][r] = _mm256_fmadd_ps(_mm256_loadu_ps(J->x + r * J->k + i), w0, a0[b][r]);
                a1[b][r] = _mm256_fmadd_ps(_mm256_loadu_ps(J->x + r * J->k + i + 8), w1, a1[b][r]);
            }
        }
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) {
            float lanes[16];
            _mm256_storeu_ps(lanes, a0[b][r]);
            _mm256_storeu_ps(lanes + 8, a1[b][r]);
            bf16_tail(J->w + (n + b) * J->k * es, J->x + r * J->k, k16, J->k, lanes, fmt);
            J->y[r * J->n + n + b] = bf16_tree(lanes);
        }
}

AVX2 static inline __attribute__((always_inline)) void bf16_avx2_fmt(const BJob *J, int64_t n0, int64_t n1,
                                                                      const int fmt) {
    int64_t n = n0;
    if (J->m <= 2) /* two rows' accumulators (2 x 2 x m registers of sixteen) */
        for (; n + 2 <= n1; n += 2) bf16_avx2_rows(J, n, 2, fmt);
    for (; n < n1; n++) bf16_avx2_rows(J, n, 1, fmt);
}

AVX2 static void bf16_avx2(const BJob *J, int64_t n0, int64_t n1) {
    switch (J->fmt) {
        case WIDE_FP16: bf16_avx2_fmt(J, n0, n1, WIDE_FP16); break;
        case WIDE_E4M3: bf16_avx2_fmt(J, n0, n1, WIDE_E4M3); break;
        case WIDE_E5M2: bf16_avx2_fmt(J, n0, n1, WIDE_E5M2); break;
        default: bf16_avx2_fmt(J, n0, n1, WIDE_BF16);
    }
}

#define AVX512F16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw")))

/* sixteen weights from element i of row wr */
AVX512F16 static inline __m512 wide16v(const uint8_t *wr, int64_t i, const int fmt) {
    if (fmt >= WIDE_E4M3) {
        const __m256i u = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(wr + i)));
        const __m256i h = fmt == WIDE_E5M2 ? _mm256_slli_epi16(u, 8)
                          : _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(u, _mm256_set1_epi16(0x7F)), 7),
                                            _mm256_slli_epi16(_mm256_and_si256(u, _mm256_set1_epi16(0x80)), 8));
        return _mm512_cvtph_ps(h);
    }
    const __m256i h = _mm256_loadu_si256((const __m256i *)(wr + 2 * i));
    return fmt == WIDE_FP16 ? _mm512_cvtph_ps(h)
                            : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512F16 static inline __attribute__((always_inline)) void bf16_avx512_rows(const BJob *J, int64_t n, const int NB,
                                                                             const int fmt) {
    const int64_t k16 = J->k / 16 * 16;
    const int es = wide_bytes(fmt);
    __m512 a[4][BF16_ROWS];
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) a[b][r] = _mm512_setzero_ps();
    const int ahead = BL_BPF && J->pf2 && n + (BF16_AHEAD + 1) * NB <= J->n;
    for (int64_t i = 0; i < k16; i += 16)
        for (int b = 0; b < NB; b++) {
            BF16_AHEAD_LINE(J, n, NB, b, i, ahead, es);
            const __m512 wv = wide16v(J->w + (n + b) * J->k * es, i, fmt);
            for (int r = 0; r < J->m; r++) a[b][r] = _mm512_fmadd_ps(_mm512_loadu_ps(J->x + r * J->k + i), wv, a[b][r]);
        }
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) {
            float lanes[16];
            _mm512_storeu_ps(lanes, a[b][r]);
            bf16_tail(J->w + (n + b) * J->k * es, J->x + r * J->k, k16, J->k, lanes, fmt);
            J->y[r * J->n + n + b] = bf16_tree(lanes);
        }
}

AVX512F16 static inline __attribute__((always_inline)) void bf16_avx512_fmt(const BJob *J, int64_t n0, int64_t n1,
                                                                           const int fmt) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) bf16_avx512_rows(J, n, 4, fmt); /* 4 x m accumulators of 32 registers (2, 8 alike) */
    for (; n < n1; n++) bf16_avx512_rows(J, n, 1, fmt);
}

AVX512F16 static void bf16_avx512(const BJob *J, int64_t n0, int64_t n1) {
    switch (J->fmt) {
        case WIDE_FP16: bf16_avx512_fmt(J, n0, n1, WIDE_FP16); break;
        case WIDE_E4M3: bf16_avx512_fmt(J, n0, n1, WIDE_E4M3); break;
        case WIDE_E5M2: bf16_avx512_fmt(J, n0, n1, WIDE_E5M2); break;
        default: bf16_avx512_fmt(J, n0, n1, WIDE_BF16);
    }
}

/* a row widened and scaled sixteen (eight) at a time; returns where the scalar tail starts */
AVX512F16 static int64_t widen_avx512(const uint8_t *wr, float *o, int64_t k, const int fmt, float s) {
    const __m512 vs = _mm512_set1_ps(s);
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) _mm512_storeu_ps(o + i, _mm512_mul_ps(wide16v(wr, i, fmt), vs));
    return i;
}

AVX2 static int64_t widen_avx2(const uint8_t *wr, float *o, int64_t k, const int fmt, float s) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(wide8(wr, i, fmt), vs));
    return i;
}
#endif

static void bf16_part(const BJob *J, int simd, int part, int parts) {
    const int64_t n0 = J->n * part / parts, n1 = J->n * (part + 1) / parts;
#ifdef BL_X86
    if (simd == 2) { bf16_avx512(J, n0, n1); return; }
    if (simd) { bf16_avx2(J, n0, n1); return; }
#endif
    bf16_portable(J, n0, n1);
}

/* wide16(w, x, y, m, n, k, fmt, simd, threads): w (n, k) weights in format fmt (0 bf16, 1 fp16: 2 bytes each;
 * 2 e4m3, 3 e5m2: one byte), x (m, k) and y (m, n) float32, m <= BF16_ROWS; simd 0 portable, 1 AVX2 (with FMA,
 * F16C), 2 AVX-512 (each falls back to the one below where the CPU lacks it) */
static PyObject *wide16(PyObject *self, PyObject *args) {
    Py_buffer w, x, y;
    Py_ssize_t m, n, k;
    int fmt, simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*w*nnniii", &w, &x, &y, &m, &n, &k, &fmt, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (fmt < WIDE_BF16 || fmt > WIDE_E5M2 || m < 0 || m > BF16_ROWS || n < 0 || k < 0
        || w.len < (Py_ssize_t)(n * k * wide_bytes(fmt)) || x.len < (Py_ssize_t)(m * k * 4)
        || y.len < (Py_ssize_t)(m * n * 4)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.wide16: buffer sizes or format do not fit, or more than 4 rows");
        goto done;
    }
    if (simd >= 2 && !cpu_avx512bw()) simd = 1;
    if (simd && !cpu_avx2()) simd = 0;
    Py_BEGIN_ALLOW_THREADS
    BJob J = {w.buf, x.buf, y.buf, m, n, k, cpu_intel(), fmt};
    int parts = threads < 1 ? 1 : threads;
    if ((int64_t)parts > n) parts = (int)(n > 0 ? n : 1);
    if (parts == 1 || n * k < 65536) {
        bf16_part(&J, simd, 0, 1);
    } else {
#pragma omp parallel for num_threads(parts) schedule(static)
        for (int part = 0; part < parts; part++) bf16_part(&J, simd, part, parts);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&x); PyBuffer_Release(&y);
    return ret;
}

/* Whole float weights to fp32 (a cast per call for the fp32 GEMM or convolution): row r of w (n, k) in format fmt,
 * times scale[r] where a scale is given, into out (n, k). Each value is widened exactly (e4m3 at 2^-8, its 256 folded
 * into the row's multiplier: a power of two), then one rounding: every path gives torch's `float(w) * scale`. */
static void widen_rows(const uint8_t *w, float *out, int64_t r0, int64_t r1, int64_t k, int fmt, const float *scale,
                       int simd) {
    const int es = wide_bytes(fmt);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + r * k * es;
        float *o = out + r * k;
        const float s = (scale ? scale[r] : 1.0f) * (fmt == WIDE_E4M3 ? 256.0f : 1.0f);
        int64_t i = 0;
#ifdef BL_X86
        if (simd == 2) i = widen_avx512(wr, o, k, fmt, s);
        else if (simd == 1) i = widen_avx2(wr, o, k, fmt, s);
#endif
        for (; i < k; i++) o[i] = wide_float(wr, i, fmt) * s;
    }
}

/* widen(w, out, n, k, fmt, scale, simd, threads): the formats and paths of `wide16`; scale holds n floats, or is
 * empty for none */
static PyObject *widen(PyObject *self, PyObject *args) {
    Py_buffer w, out, sc;
    Py_ssize_t n, k;
    int fmt, simd, threads;
    if (!PyArg_ParseTuple(args, "y*w*nniy*ii", &w, &out, &n, &k, &fmt, &sc, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (fmt < WIDE_BF16 || fmt > WIDE_E5M2 || n < 0 || k < 0 || w.len < (Py_ssize_t)(n * k * wide_bytes(fmt))
        || out.len < (Py_ssize_t)(n * k * 4) || (sc.len != 0 && sc.len < (Py_ssize_t)(n * 4))) {
        PyErr_SetString(PyExc_ValueError, "lowbit.widen: buffer sizes or format do not fit");
        goto done;
    }
    if (simd >= 2 && !cpu_avx512bw()) simd = 1;
    if (simd && !cpu_avx2()) simd = 0;
    Py_BEGIN_ALLOW_THREADS
    const float *scale = sc.len ? (const float *)sc.buf : NULL;
    int parts = threads < 1 ? 1 : threads;
    if (parts == 1 || n * k < 65536) {
        widen_rows(w.buf, out.buf, 0, n, k, fmt, scale, simd);
    } else {
#pragma omp parallel for num_threads(parts) schedule(static)
        for (int part = 0; part < parts; part++)
            widen_rows(w.buf, out.buf, n * part / parts, n * (part + 1) / parts, k, fmt, scale, simd);
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&out); PyBuffer_Release(&sc);
    return ret;
}
