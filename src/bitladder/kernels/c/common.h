/* What the C kernels share: fp16 bits to float without F16C, the int8 activation grid per block and the AVX2
 * check. Included by each kernel file (every function static: one copy per extension module). */
#ifndef BL_COMMON_H
#define BL_COMMON_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BL_X86 1
#endif

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- activations: int8 per block of xb, scale absmax / 127 (zero block: scale 0, codes 0) ---- */
static void quant_block(const float *x, int64_t lo, int64_t hi, int64_t end, int8_t *xq, float *xs, int32_t *xsum) {
    float amax = 0.0f;
    for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
    float s = amax / 127.0f;
    int32_t sum = 0;
    for (int64_t i = lo; i < end; i++) {
        int32_t q = 0;
        if (i < hi && s > 0.0f) {
            float r = nearbyintf(x[i] / s);
            q = (int32_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
        }
        xq[i] = (int8_t)q;
        sum += q;
    }
    *xs = s;
    *xsum = sum;
}

#ifdef BL_X86
/* a full block of n (a multiple of 8) inputs, eight at a time: the same IEEE division and round-to-even as the
 * scalar path, so the same codes; the vector path is only there because the scalar one cost as much as the
 * GEMV of a small layer */
__attribute__((target("avx2"))) static void quant_block_avx2(const float *x, int64_t n, int8_t *xq, float *xs,
                                                             int32_t *xsum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_shuffle_ps(h, h, 0x4E));
    h = _mm_max_ps(h, _mm_shuffle_ps(h, h, 0xB1));
    const float s = _mm_cvtss_f32(h) / 127.0f;
    *xs = s;
    if (!(s > 0.0f)) {
        memset(xq, 0, (size_t)n);
        *xsum = 0;
        return;
    }
    const __m256 sv = _mm256_set1_ps(s), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    __m256i sum = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        sum = _mm256_add_epi32(sum, q);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(xq + i), _mm_packs_epi16(p16, p16));
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    *xsum = _mm_cvtsi128_si32(t);
}
#endif

#ifdef BL_X86
/* eight float outputs to y, or only the first `left` of them at the end of a row (the batch GEMMs' tiles) */
__attribute__((target("avx"))) static inline void store8(float *y, __m256 v, int64_t left) {
    if (left >= 8) {
        _mm256_storeu_ps(y, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(y, tmp, (size_t)left * sizeof(float));
    }
}
#endif

/* block b of x (k valid floats) -> xq[b * xb ..], its scale xs[b] and code sum xsum[b]; simd: AVX2 */
static void quant_block_at(const float *x, int64_t k, int64_t xb, int64_t b, int8_t *xq, float *xs, int32_t *xsum,
                           int simd) {
    const int64_t lo = b * xb, hi = lo + xb < k ? lo + xb : k;
#ifdef BL_X86
    if (simd && hi == lo + xb) {
        quant_block_avx2(x + lo, xb, xq + lo, xs + b, xsum + b);
        return;
    }
    if (simd && xb <= 128) { /* the row's last, short block: zero-padded, the same codes (zeros round to 0) */
        float tail[128] = {0};
        memcpy(tail, x + lo, (size_t)(hi > lo ? hi - lo : 0) * sizeof(float));
        quant_block_avx2(tail, xb, xq + lo, xs + b, xsum + b);
        return;
    }
#endif
    (void)simd;
    quant_block(x, lo, hi, lo + xb, xq, xs + b, xsum + b);
}

/* m rows of x (k floats each, rows k apart) -> int8 codes (rows kp apart), one scale and code sum per block of xb
 * (a multiple of 8; rows xstride apart). quant_part does part `part` of `parts` of them, split by blocks in
 * (row, block) order: threads share one row's blocks as well as many rows, so a single row's quantisation is not
 * left to one thread. A block's codes do not depend on the split. */
typedef struct {
    const float *x;
    int8_t *xq;
    float *xs;
    int32_t *xsum;
    int64_t m, k, kp, xb, xstride;
} QuantRows;

static void quant_part(const void *job, int simd, int part, int parts) {
    const QuantRows *Q = job;
    const int64_t nbx = Q->kp / Q->xb, total = Q->m * nbx;
    for (int64_t i = total * part / parts; i < total * (part + 1) / parts; i++) {
        const int64_t r = i / nbx;
        quant_block_at(Q->x + r * Q->k, Q->k, Q->xb, i % nbx, Q->xq + r * Q->kp, Q->xs + r * Q->xstride,
                       Q->xsum + r * Q->xstride, simd);
    }
}

/* a share of a call's work: part `part` of `parts` */
typedef void (*PartFn)(const void *job, int simd, int part, int parts);

/* prep's parts (the activations' quantisation), then run's, in one parallel region. Under shared_min activations
 * (rows x kp) prep runs on one thread first: there the barrier between the two costs more than sharing saves. */
static void prep_then_run(PartFn prep, const void *pjob, int64_t size, int64_t shared_min, PartFn run,
                          const void *job, int simd, int parts) {
    const int shared = parts > 1 && size >= shared_min;
    if (!shared) prep(pjob, simd, 0, 1);
    if (parts <= 1) {
        run(job, simd, 0, 1);
        return;
    }
#pragma omp parallel num_threads(parts)
    {
        if (shared) {
#pragma omp for schedule(static)
            for (int part = 0; part < parts; part++) prep(pjob, simd, part, parts);
        }
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
        for (int part = 0; part < parts; part++) run(job, simd, part, parts);
    }
}

static inline int cpu_vnni(void) { /* vpdpbusd on 256-bit registers: AVX512-VNNI with VL */
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static inline int cpu_intel(void) { /* the vendor, for memory hints measured on one vendor's cores only */
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
#else
    return 0;
#endif
}

#ifdef BL_X86
/* a weight line's software prefetch: with `two` (an Intel CPU) into L2 `far` bytes ahead and into L1 `near` bytes
 * ahead, which keeps more misses in flight per core there (docs/DESIGN.md, 'A C GEMV for one row'), else into L1
 * `alone` bytes ahead */
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *at, int two, int far, int near,
                                                                 int alone) {
    if (two) {
        _mm_prefetch((const char *)(at + far), _MM_HINT_T1);
        _mm_prefetch((const char *)(at + near), _MM_HINT_T0);
    } else {
        _mm_prefetch((const char *)(at + alone), _MM_HINT_T0);
    }
}
#endif

static inline int cpu_avx512bw(void) {
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

static inline int cpu_vpopcntdq(void) { /* vpopcntq on 512-bit registers (Ice Lake on; not Skylake-SP) */
#ifdef BL_X86
    __builtin_cpu_init();
    return cpu_avx512bw() && __builtin_cpu_supports("avx512vpopcntdq");
#else
    return 0;
#endif
}

static inline int cpu_avx2(void) {
#ifdef BL_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

#endif
