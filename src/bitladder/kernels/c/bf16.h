/* 16-bit float weights (bf16 or fp16) x fp32 activations at a few rows, included by lowbit.c:
 * y[m, n] = sum_k x[m, k] * float(w[n, k]), each weight widened in registers, exactly (a bf16's 16 bits become a
 * float's high half; fp16 by vcvtph2ps, F16C), never stored as fp32. The products of a row add up in sixteen lanes
 * (lane k % 16, fused multiply-add in k order), then a fixed tree (lanes i and i + 8, then i + 4, i + 2, i + 1), on
 * every path: AVX-512, AVX2 (two registers of eight lanes) and portable (`fmaf`) give the same bits. A row of
 * weights is read once for all the activation rows. */

#define BF16_ROWS 4 /* activation rows a call takes (more: the caller converts panels and runs the fp32 GEMM) */

typedef struct {
    const uint16_t *w; const float *x; float *y;
    int64_t m, n, k;
    int pf2; /* an Intel CPU: the rows into L2 far ahead, into L1 near */
    int fp16; /* the weights' format: 0 bf16, 1 fp16 */
} BJob;

static inline float bf16_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float bf16_tree(float *l) { /* lanes i + 8, then + 4, + 2, + 1 */
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] = l[i] + l[i + w];
    return l[0];
}

static inline float wide_float(uint16_t h, int fp16) { return fp16 ? half_to_float(h) : bf16_float(h); }

/* the tail of a row (k0 .. k - 1) into lanes k % 16, as the vector loops would have */
static inline void bf16_tail(const uint16_t *wr, const float *xr, int64_t k0, int64_t k, float *lanes, int fp16) {
    for (int64_t i = k0; i < k; i++) lanes[i % 16] = fmaf(xr[i], wide_float(wr[i], fp16), lanes[i % 16]);
}

static void bf16_portable(const BJob *J, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++)
        for (int64_t r = 0; r < J->m; r++) {
            float lanes[16] = {0};
            bf16_tail(J->w + n * J->k, J->x + r * J->k, 0, J->k, lanes, J->fp16);
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
#define BF16_AHEAD_LINE(J, n, NB, b, i, ahead)                                                                 \
    if ((ahead) && !((i) & 31))                                                                                \
    _mm_prefetch((const char *)((J)->w + ((n) + BF16_AHEAD * (NB) + (b)) * (J)->k + (i)), _MM_HINT_T1)

AVX2 static inline __m256 bf16_widen8(const uint16_t *p, const int fp16) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return fp16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* weight rows n .. n + NB - 1 against every activation row: NB rows' sums in flight hide the FMA's latency (each
 * output's own sum keeps its order) */
AVX2 static inline __attribute__((always_inline)) void bf16_avx2_rows(const BJob *J, int64_t n, const int NB,
                                                                       const int fp16) {
    const int64_t k16 = J->k / 16 * 16;
    __m256 a0[2][BF16_ROWS], a1[2][BF16_ROWS];
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) a0[b][r] = a1[b][r] = _mm256_setzero_ps();
    const int ahead = BL_BPF && J->pf2 && n + (BF16_AHEAD + 1) * NB <= J->n;
    for (int64_t i = 0; i < k16; i += 16)
        for (int b = 0; b < NB; b++) {
            BF16_AHEAD_LINE(J, n, NB, b, i, ahead);
            const uint16_t *wr = J->w + (n + b) * J->k;
            const __m256 w0 = bf16_widen8(wr + i, fp16), w1 = bf16_widen8(wr + i + 8, fp16);
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
            bf16_tail(J->w + (n + b) * J->k, J->x + r * J->k, k16, J->k, lanes, J->fp16);
            J->y[r * J->n + n + b] = bf16_tree(lanes);
        }
}

AVX2 static inline __attribute__((always_inline)) void bf16_avx2_fmt(const BJob *J, int64_t n0, int64_t n1,
                                                                      const int fp16) {
    int64_t n = n0;
    if (J->m <= 2) /* two rows' accumulators (2 x 2 x m registers of sixteen) */
        for (; n + 2 <= n1; n += 2) bf16_avx2_rows(J, n, 2, fp16);
    for (; n < n1; n++) bf16_avx2_rows(J, n, 1, fp16);
}

AVX2 static void bf16_avx2(const BJob *J, int64_t n0, int64_t n1) {
    if (J->fp16) bf16_avx2_fmt(J, n0, n1, 1);
    else bf16_avx2_fmt(J, n0, n1, 0);
}

#define AVX512F16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw")))

AVX512F16 static inline __attribute__((always_inline)) void bf16_avx512_rows(const BJob *J, int64_t n, const int NB,
                                                                             const int fp16) {
    const int64_t k16 = J->k / 16 * 16;
    __m512 a[4][BF16_ROWS];
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) a[b][r] = _mm512_setzero_ps();
    const int ahead = BL_BPF && J->pf2 && n + (BF16_AHEAD + 1) * NB <= J->n;
    for (int64_t i = 0; i < k16; i += 16)
        for (int b = 0; b < NB; b++) {
            BF16_AHEAD_LINE(J, n, NB, b, i, ahead);
            const __m256i h = _mm256_loadu_si256((const __m256i *)(J->w + (n + b) * J->k + i));
            const __m512 wv = fp16 ? _mm512_cvtph_ps(h)
                                   : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            for (int r = 0; r < J->m; r++) a[b][r] = _mm512_fmadd_ps(_mm512_loadu_ps(J->x + r * J->k + i), wv, a[b][r]);
        }
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < J->m; r++) {
            float lanes[16];
            _mm512_storeu_ps(lanes, a[b][r]);
            bf16_tail(J->w + (n + b) * J->k, J->x + r * J->k, k16, J->k, lanes, J->fp16);
            J->y[r * J->n + n + b] = bf16_tree(lanes);
        }
}

AVX512F16 static inline __attribute__((always_inline)) void bf16_avx512_fmt(const BJob *J, int64_t n0, int64_t n1,
                                                                           const int fp16) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) bf16_avx512_rows(J, n, 4, fp16); /* 4 x m accumulators of 32 registers (2, 8 alike) */
    for (; n < n1; n++) bf16_avx512_rows(J, n, 1, fp16);
}

AVX512F16 static void bf16_avx512(const BJob *J, int64_t n0, int64_t n1) {
    if (J->fp16) bf16_avx512_fmt(J, n0, n1, 1);
    else bf16_avx512_fmt(J, n0, n1, 0);
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

/* wide16(w, x, y, m, n, k, fp16, simd, threads): w (n, k) bf16 (fp16 = 0) or fp16 (1) bits, x (m, k) and y (m, n)
 * float32, m <= BF16_ROWS; simd 0 portable, 1 AVX2 (with FMA, F16C), 2 AVX-512 (each falls back to the one below
 * where the CPU lacks it) */
static PyObject *wide16(PyObject *self, PyObject *args) {
    Py_buffer w, x, y;
    Py_ssize_t m, n, k;
    int fp16, simd, threads;
    if (!PyArg_ParseTuple(args, "y*y*w*nnniii", &w, &x, &y, &m, &n, &k, &fp16, &simd, &threads)) return NULL;
    PyObject *ret = NULL;
    if (m < 0 || m > BF16_ROWS || n < 0 || k < 0 || w.len < (Py_ssize_t)(n * k * 2) || x.len < (Py_ssize_t)(m * k * 4)
        || y.len < (Py_ssize_t)(m * n * 4)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.wide16: buffer sizes do not fit, or more than 4 rows");
        goto done;
    }
    if (simd >= 2 && !cpu_avx512bw()) simd = 1;
    if (simd && !cpu_avx2()) simd = 0;
    Py_BEGIN_ALLOW_THREADS
    BJob J = {w.buf, x.buf, y.buf, m, n, k, cpu_intel(), fp16 != 0};
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
