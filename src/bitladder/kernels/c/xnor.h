/* XNOR-popcount, included by lowbit.c: binary weights x sign(x),
 * out[m, n] = beta[m] * sum_g s[n, g] * (k_g - 2 popcount(w ^ x)).
 * Sign bits are 1 where the value is >= 0, padding bits 0 in both operands (they agree and are not counted: k_g is
 * the group's valid length). Paths (`hw`): 0 portable, 1 AVX2 (popcount by nibble lookup, vpshufb; the path of
 * AVX-512 CPUs without VPOPCNTDQ, such as Skylake-SP), 2 AVX-512 VPOPCNTDQ. Only the popcount differs between them, an
 * exact integer, and every path packs the signs and sums |x| the same way: their outputs are equal bit for bit. */

typedef struct {
    const uint64_t *wb; const float *s; const uint64_t *xb; const float *beta; float *y;
    int64_t m, n, k, nwords, gwords, nb;
    int pf2; /* the rows' prefetch: into L2 far ahead, then L1 near (an Intel CPU), else into L1 */
} XJob;

#ifndef BL_XPF
#define BL_XPF 1 /* the AVX-512 rows ask for their lines ahead (0: the hardware prefetcher alone) */
#endif
#ifndef BL_XPF_L1
#define BL_XPF_L1 1024 /* bytes ahead an Intel CPU asks the weight rows into L1 (into L2 BL_PF ahead) */
#endif

/* popcount(w ^ x) over words [j0, j1) with COUNT, every activation row against weight rows r0 .. r1 - 1 */
#define XNOR_ROWS(NAME, ATTR, COUNT, PREFETCH)                                                             \
    ATTR static void NAME(const XJob *J, int64_t r0, int64_t r1) {                                         \
        for (int64_t n = r0; n < r1; n++) {                                                                \
            const uint64_t *wr = J->wb + n * J->nwords;                                                    \
            PREFETCH(J, wr);                                                                               \
            for (int64_t m = 0; m < J->m; m++) {                                                           \
                const uint64_t *xr = J->xb + m * J->nwords;                                                \
                float tot = 0.0f;                                                                          \
                for (int64_t g = 0; g < J->nb; g++) {                                                      \
                    int64_t kg = J->k - 64 * J->gwords * g;                                                \
                    if (kg > 64 * J->gwords) kg = 64 * J->gwords;                                          \
                    int64_t pc = COUNT(wr, xr, g * J->gwords, (g + 1) * J->gwords);                        \
                    tot += J->s[n * J->nb + g] * (float)(kg - 2 * pc);                                     \
                }                                                                                          \
                J->y[m * J->n + n] = J->beta[m] * tot;                                                     \
            }                                                                                              \
        }                                                                                                  \
    }

static inline int64_t count_words(const uint64_t *w, const uint64_t *x, int64_t j0, int64_t j1) {
    int64_t pc = 0;
    for (int64_t j = j0; j < j1; j++) pc += __builtin_popcountll(w[j] ^ x[j]);
    return pc;
}
#define NO_PREFETCH(J, w)
XNOR_ROWS(xnor_rows_portable, , count_words, NO_PREFETCH)

/* row r's sign bits (1 where x >= 0) and mean |x|: |x| summed in eight lanes (lane i % 8 in order, then lanes_sum's
 * tree), so the AVX2 packing below gives the same bits */
static void xnor_signs(const float *xr, int64_t k, uint64_t *xb, float *beta) {
    float lanes[8] = {0};
    for (int64_t i = 0; i < k; i++) {
        lanes[i % 8] += fabsf(xr[i]);
        xb[i / 64] |= (uint64_t)(xr[i] >= 0.0f) << (i % 64);
    }
    *beta = k > 0 ? lanes_sum(lanes) / (float)k : 0.0f;
}

#ifdef BL_X86
AVX2 static void xnor_signs_avx2(const float *xr, int64_t k, uint64_t *xb, float *beta) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), zero = _mm256_setzero_ps();
    __m256 acc = zero;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256 v = _mm256_loadu_ps(xr + i);
        acc = _mm256_add_ps(acc, _mm256_and_ps(v, absmask));
        xb[i / 64] |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)) << (i % 64);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (; i < k; i++) {
        lanes[i % 8] += fabsf(xr[i]);
        xb[i / 64] |= (uint64_t)(xr[i] >= 0.0f) << (i % 64);
    }
    *beta = k > 0 ? lanes_sum(lanes) / (float)k : 0.0f;
}

/* the AVX2 path counts 256 bits at a time by nibble lookup (vpshufb), byte counts widened by vpsadbw */
AVX2 static inline int64_t count_avx2(const uint64_t *w, const uint64_t *x, int64_t j0, int64_t j1) {
    if (j1 - j0 < 4) { /* a group of one to three words (64-192 weights): popcnt, no vector set-up and reduction */
        int64_t pc = 0;
        for (int64_t j = j0; j < j1; j++) pc += __builtin_popcountll(w[j] ^ x[j]);
        return pc;
    }
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i total = _mm256_setzero_si256();
    int64_t j = j0;
    while (j + 4 <= j1) { /* at most 31 vectors of byte counts (8 each) before they are widened */
        __m256i bytes = _mm256_setzero_si256();
        for (int t = 0; t < 31 && j + 4 <= j1; t++, j += 4) {
            __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + j)),
                                         _mm256_loadu_si256((const __m256i *)(x + j)));
            __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
            bytes = _mm256_add_epi8(bytes, c);
        }
        total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
    }
    int64_t pc = _mm256_extract_epi64(total, 0) + _mm256_extract_epi64(total, 1) + _mm256_extract_epi64(total, 2)
                 + _mm256_extract_epi64(total, 3);
    for (; j < j1; j++) pc += __builtin_popcountll(w[j] ^ x[j]);
    return pc;
}
/* the row's lines: on an Intel CPU into L2 BL_PF bytes ahead and into L1 BL_XPF_L1 ahead, else into L1 BL_PF ahead */
#define ROW_PREFETCH2(J, w)                                                                                 \
    for (int64_t c = 0; BL_XPF && c < (J)->nwords * 8; c += 64)                                             \
    prefetch_ahead((const uint8_t *)(w) + c, (J)->pf2, BL_PF, BL_XPF_L1, BL_PF)
XNOR_ROWS(xnor_rows_avx2, AVX2, count_avx2, ROW_PREFETCH2)

#define AVX512P __attribute__((target("avx2,fma,f16c,popcnt,avx512f,avx512bw,avx512vpopcntdq")))

/* the AVX-512 path: eight words a vector, the last few under a mask (zeros count nothing). Without VPOPCNTDQ the
 * lookup stays on 256-bit registers: on an Intel core 512-bit vpshufb issues on one port, 256-bit on two, and the
 * 512-bit lookup streamed no faster (docs/results/notes.md, 'XNOR at one row') */
AVX512P static inline int64_t count_vpop(const uint64_t *w, const uint64_t *x, int64_t j0, int64_t j1) {
    if (j1 - j0 < 4) {
        int64_t pc = 0;
        for (int64_t j = j0; j < j1; j++) pc += __builtin_popcountll(w[j] ^ x[j]);
        return pc;
    }
    __m512i total = _mm512_setzero_si512();
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8)
        total = _mm512_add_epi64(total, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(w + j),
                                                                              _mm512_loadu_si512(x + j))));
    if (j < j1) {
        const __mmask8 k = (__mmask8)((1u << (j1 - j)) - 1);
        total = _mm512_add_epi64(total, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(k, w + j),
                                                                              _mm512_maskz_loadu_epi64(k, x + j))));
    }
    return _mm512_reduce_add_epi64(total);
}

XNOR_ROWS(xnor_rows_vpop, AVX512P, count_vpop, ROW_PREFETCH2)
#endif

static void xnor_part(const XJob *J, int hw, int part, int parts) {
    int64_t r0 = J->n * part / parts, r1 = J->n * (part + 1) / parts;
#ifdef BL_X86
    if (hw == 2) { xnor_rows_vpop(J, r0, r1); return; }
    if (hw) { xnor_rows_avx2(J, r0, r1); return; }
#endif
    xnor_rows_portable(J, r0, r1);
}

/* the path xnor runs for a requested hw on this CPU (each falls back to the one below) */
static int xnor_path(int hw) {
    if (hw >= 2 && !cpu_vpopcntdq()) hw = 1;
    if (hw >= 1 && !cpu_avx2()) hw = 0;
    return hw < 0 ? 0 : hw;
}

/* xnor(wb, s, x, y, m, n, k, gwords, nb, hw, threads): wb (n, nb * gwords) uint64, s (n, nb) float32; hw as above */
static PyObject *xnor(PyObject *self, PyObject *args) {
    Py_buffer w, sc, x, y;
    Py_ssize_t m, n, k, gwords, nb;
    int hw, threads;
    if (!PyArg_ParseTuple(args, "y*y*y*w*nnnnnii", &w, &sc, &x, &y, &m, &n, &k, &gwords, &nb, &hw, &threads))
        return NULL;
    PyObject *ret = NULL;
    int64_t nwords = gwords * nb;
    if (gwords < 1 || nb < 1 || k > 64 * nwords || w.len < (Py_ssize_t)(n * nwords * 8)
        || sc.len < (Py_ssize_t)(n * nb * 4) || x.len < (Py_ssize_t)(m * k * 4) || y.len < (Py_ssize_t)(m * n * 4)) {
        PyErr_SetString(PyExc_ValueError, "lowbit.xnor: buffer sizes do not fit");
        goto done;
    }
    hw = xnor_path(hw);
    uint64_t *xb = calloc((size_t)(m * nwords), 8);
    float *beta = calloc((size_t)(m > 0 ? m : 1), sizeof(float));
    if (!xb || !beta) { free(xb); free(beta); PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < m; r++) {
#ifdef BL_X86
        if (hw) { xnor_signs_avx2((const float *)x.buf + r * k, k, xb + r * nwords, beta + r); continue; }
#endif
        xnor_signs((const float *)x.buf + r * k, k, xb + r * nwords, beta + r);
    }
    XJob J = {w.buf, sc.buf, xb, beta, y.buf, m, n, k, nwords, gwords, nb, cpu_intel()};
    int parts = threads < 1 ? 1 : threads;
    if ((int64_t)parts > n) parts = (int)(n > 0 ? n : 1);
    if (parts == 1 || n * m * nwords < 65536) { /* small work: one thread beats waking the pool */
        xnor_part(&J, hw, 0, 1);
    } else {
#pragma omp parallel for num_threads(parts) schedule(static)
        for (int part = 0; part < parts; part++) xnor_part(&J, hw, part, parts);
    }
    Py_END_ALLOW_THREADS
    free(xb); free(beta);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&sc); PyBuffer_Release(&x); PyBuffer_Release(&y);
    return ret;
}
