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
#define BL_XPF 1 /* the SIMD rows ask for their lines ahead (0: the hardware prefetcher alone) */
#endif
#ifndef BL_XPF_L1
#define BL_XPF_L1 1024 /* bytes ahead an Intel CPU asks the weight rows into L1 (into L2 BL_PF ahead) */
#endif

/* every activation row against weight rows r0 .. r1 - 1: one scale per row takes COUNT over the whole row, groups
 * take GROUPS (below), whose terms add up in eight lanes */
#define XNOR_ROWS(NAME, ATTR, COUNT, GROUPS, PREFETCH)                                                         \
    ATTR static void NAME(const XJob *J, int64_t r0, int64_t r1) {                                             \
        for (int64_t n = r0; n < r1; n++) {                                                                    \
            const uint64_t *wr = J->wb + n * J->nwords;                                                        \
            PREFETCH(J, wr);                                                                                   \
            for (int64_t m = 0; m < J->m; m++) {                                                               \
                const uint64_t *xr = J->xb + m * J->nwords;                                                    \
                const float tot = J->nb == 1 ? 0.0f + J->s[n] * (float)(J->k - 2 * COUNT(wr, xr, 0, J->gwords)) \
                                             : GROUPS(J, n, wr, xr);                                           \
                J->y[m * J->n + n] = J->beta[m] * tot;                                                         \
            }                                                                                                  \
        }                                                                                                      \
    }

/* groups g0 .. nb - 1 of row n one at a time: the term s[n, g] * (k_g - 2 popcount) into lane g % 8 */
#define XNOR_GROUP_TAIL(J, n, wr, xr, g0, lanes, COUNT)                                                        \
    for (int64_t gt = (g0); gt < (J)->nb; gt++) {                                                              \
        int64_t kg = (J)->k - 64 * (J)->gwords * gt;                                                           \
        if (kg > 64 * (J)->gwords) kg = 64 * (J)->gwords;                                                      \
        const int64_t pc = COUNT(wr, xr, gt * (J)->gwords, (gt + 1) * (J)->gwords);                            \
        lanes[gt % 8] = lanes[gt % 8] + (J)->s[(n) * (J)->nb + gt] * (float)(kg - 2 * pc);                     \
    }

static inline int64_t count_words(const uint64_t *w, const uint64_t *x, int64_t j0, int64_t j1) {
    int64_t pc = 0;
    for (int64_t j = j0; j < j1; j++) pc += __builtin_popcountll(w[j] ^ x[j]);
    return pc;
}
/* a row's group terms in eight lanes (lane g % 8, in group order), then lanes_sum's tree: the SIMD paths add the
 * same terms in the same lanes eight groups at a time, so the float chain does not wait on one sum per group */
static float groups_portable(const XJob *J, int64_t n, const uint64_t *wr, const uint64_t *xr) {
    float lanes[8] = {0};
    XNOR_GROUP_TAIL(J, n, wr, xr, 0, lanes, count_words)
    return lanes_sum(lanes);
}
#define NO_PREFETCH(J, w)
XNOR_ROWS(xnor_rows_portable, , count_words, groups_portable, NO_PREFETCH)

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
#define ROW_PREFETCH2(J, w)                                                                                    \
    for (int64_t c = 0; BL_XPF && c < (J)->nwords * 8; c += 64)                                                \
    prefetch_ahead((const uint8_t *)(w) + c, (J)->pf2, BL_PF, BL_XPF_L1, BL_PF)
/* eight whole groups a step: their popcounts (PC8, below), then one multiply and add of the lanes */
#define XNOR_GROUPS8(NAME, ATTR, COUNT, PC8)                                                                   \
    ATTR static float NAME(const XJob *J, int64_t n, const uint64_t *wr, const uint64_t *xr) {                 \
        const int64_t gb = 64 * J->gwords, whole = J->k / gb;                                                  \
        const __m256i kgv = _mm256_set1_epi32((int32_t)gb);                                                    \
        __m256 acc = _mm256_setzero_ps();                                                                      \
        int64_t g = 0;                                                                                         \
        for (; g + 8 <= whole; g += 8) {                                                                       \
            const __m256i pc = PC8(J, wr, xr, g);                                                              \
            const __m256 t = _mm256_cvtepi32_ps(_mm256_sub_epi32(kgv, _mm256_slli_epi32(pc, 1)));              \
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(J->s + n * J->nb + g), t));                 \
        }                                                                                                      \
        float lanes[8];                                                                                        \
        _mm256_storeu_ps(lanes, acc);                                                                          \
        XNOR_GROUP_TAIL(J, n, wr, xr, g, lanes, COUNT)                                                         \
        return lanes_sum(lanes);                                                                               \
    }

/* eight groups' popcounts by COUNT, one group at a time */
#define PC8_EACH(J, wr, xr, g, COUNT) _mm256_setr_epi32(                                                       \
    (int32_t)COUNT(wr, xr, ((g) + 0) * (J)->gwords, ((g) + 1) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 1) * (J)->gwords, ((g) + 2) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 2) * (J)->gwords, ((g) + 3) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 3) * (J)->gwords, ((g) + 4) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 4) * (J)->gwords, ((g) + 5) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 5) * (J)->gwords, ((g) + 6) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 6) * (J)->gwords, ((g) + 7) * (J)->gwords),                                  \
    (int32_t)COUNT(wr, xr, ((g) + 7) * (J)->gwords, ((g) + 8) * (J)->gwords))
/* the popcounts of the eight words from word j, as eight int32: nibble lookups, each word's byte counts summed by
 * vpsadbw into its own 64-bit lane */
AVX2 static inline __m256i words8_avx2(const uint64_t *wr, const uint64_t *xr, int64_t j) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i c[2];
    for (int h = 0; h < 2; h++) {
        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wr + j + 4 * h)),
                                           _mm256_loadu_si256((const __m256i *)(xr + j + 4 * h)));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        c[h] = _mm256_sad_epu8(_mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                               _mm256_shuffle_epi8(lut, hi)),
                               _mm256_setzero_si256());
    }
    /* words 0-3 in the even int32 slots, 4-7 in the odd ones, then in order */
    const __m256i both = _mm256_blend_epi32(c[0], _mm256_slli_epi64(c[1], 32), 0xAA);
    return _mm256_permutevar8x32_epi32(both, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* eight groups' popcounts as eight int32: groups of one word from one WORDS8 (eight words' counts), of two from
 * sixteen words summed in pairs (hadd within 128-bit lanes gives groups 0 1 4 5 | 2 3 6 7, put back in order),
 * others by COUNT one group at a time */
#define PC8_FROM_WORDS(NAME, ATTR, WORDS8, COUNT)                                                              \
    ATTR static inline __m256i NAME(const XJob *J, const uint64_t *wr, const uint64_t *xr, int64_t g) {         \
        if (J->gwords == 1) return WORDS8(wr, xr, g);                                                          \
        if (J->gwords == 2)                                                                                    \
            return _mm256_permute4x64_epi64(_mm256_hadd_epi32(WORDS8(wr, xr, 2 * g), WORDS8(wr, xr, 2 * g + 8)), \
                                            0xD8);                                                             \
        return PC8_EACH(J, wr, xr, g, COUNT);                                                                  \
    }
PC8_FROM_WORDS(pc8_avx2, AVX2, words8_avx2, count_avx2)
XNOR_GROUPS8(groups_avx2, AVX2, count_avx2, pc8_avx2)
XNOR_ROWS(xnor_rows_avx2, AVX2, count_avx2, groups_avx2, ROW_PREFETCH2)

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

/* the popcounts of the eight words from word j, as eight int32 */
AVX512P static inline __m256i words8_vpop(const uint64_t *wr, const uint64_t *xr, int64_t j) {
    return _mm512_cvtepi64_epi32(_mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(wr + j),
                                                                      _mm512_loadu_si512(xr + j))));
}

PC8_FROM_WORDS(pc8_vpop, AVX512P, words8_vpop, count_vpop)
XNOR_GROUPS8(groups_vpop, AVX512P, count_vpop, pc8_vpop)
XNOR_ROWS(xnor_rows_vpop, AVX512P, count_vpop, groups_vpop, ROW_PREFETCH2)
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
