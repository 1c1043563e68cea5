/* Whole-weight dequantisation for the batch path (numba_dequant.py): out[r, k] = float(code) * s[r, g] - so[r, g].
 * Codes are one 4-bit plane (element 2j of a group is the low nibble of byte j, 2j + 1 the high one) or one
 * 8-bit plane (unsigned or signed). Rows are split over torch's OpenMP pool. The AVX2 path and the portable one
 * do the same multiply, then subtract (no contraction: -ffp-contract=off), so they give the same bits. */
#ifndef BL_DEQUANT_H
#define BL_DEQUANT_H
#include "common.h"

typedef struct {
    const uint8_t *w;  /* (n, kp * bits / 8) */
    const float *s;    /* (n, nb) */
    const float *so;   /* (n, nb) */
    float *out;        /* (n, kp) */
    int64_t n, kp, gsz, nb;
    int bits, sign;    /* 4 or 8; 8-bit codes read as int8 where sign */
} DJob;

static inline float dq_code(const DJob *J, const uint8_t *wr, int64_t k) {
    if (J->bits == 4) return (float)((wr[k / 2] >> (4 * (k & 1))) & 15);
    return J->sign ? (float)(int8_t)wr[k] : (float)wr[k];
}

static void dq_rows_portable(const DJob *J, int64_t r0, int64_t r1) {
    const int64_t row_bytes = J->kp * J->bits / 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = J->w + r * row_bytes;
        float *o = J->out + r * J->kp;
        for (int64_t g = 0; g < J->nb; g++) {
            const float a = J->s[r * J->nb + g], c = J->so[r * J->nb + g];
            for (int64_t k = g * J->gsz; k < (g + 1) * J->gsz; k++) o[k] = dq_code(J, wr, k) * a - c;
        }
    }
}

#ifdef BL_X86
__attribute__((target("avx2"))) static inline void dq_store8(float *o, __m256i codes, __m256 a, __m256 c) {
    _mm256_storeu_ps(o, _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(codes), a), c));
}

__attribute__((target("avx2"))) static void dq_rows_avx2(const DJob *J, int64_t r0, int64_t r1) {
    const int64_t row_bytes = J->kp * J->bits / 8;
    const __m128i nib = _mm_set1_epi8(15);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = J->w + r * row_bytes;
        float *o = J->out + r * J->kp;
        for (int64_t g = 0; g < J->nb; g++) {
            const float af = J->s[r * J->nb + g], cf = J->so[r * J->nb + g];
            const __m256 a = _mm256_set1_ps(af), c = _mm256_set1_ps(cf);
            int64_t k = g * J->gsz, end = k + J->gsz;
            if (J->bits == 4) {
                for (; k + 32 <= end; k += 32) { /* 16 bytes: 32 codes, low nibble first */
                    __m128i v = _mm_loadu_si128((const __m128i *)(wr + k / 2));
                    __m128i lo = _mm_and_si128(v, nib), hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
                    __m128i i0 = _mm_unpacklo_epi8(lo, hi), i1 = _mm_unpackhi_epi8(lo, hi);
                    dq_store8(o + k, _mm256_cvtepu8_epi32(i0), a, c);
                    dq_store8(o + k + 8, _mm256_cvtepu8_epi32(_mm_srli_si128(i0, 8)), a, c);
                    dq_store8(o + k + 16, _mm256_cvtepu8_epi32(i1), a, c);
                    dq_store8(o + k + 24, _mm256_cvtepu8_epi32(_mm_srli_si128(i1, 8)), a, c);
                }
            } else {
                for (; k + 8 <= end; k += 8) {
                    __m128i v = _mm_loadl_epi64((const __m128i *)(wr + k));
                    dq_store8(o + k, J->sign ? _mm256_cvtepi8_epi32(v) : _mm256_cvtepu8_epi32(v), a, c);
                }
            }
            for (; k < end; k++) o[k] = dq_code(J, wr, k) * af - cf;
        }
    }
}
#endif

static void dq_part(const DJob *J, int simd, int part, int parts) {
    int64_t r0 = J->n * part / parts, r1 = J->n * (part + 1) / parts;
#ifdef BL_X86
    if (simd) { dq_rows_avx2(J, r0, r1); return; }
#endif
    dq_rows_portable(J, r0, r1);
}

static void dq_parallel(const DJob *J, int simd, int threads) {
    if (threads < 1) threads = 1;
    if ((int64_t)threads > J->n) threads = (int)(J->n > 0 ? J->n : 1);
    if (threads == 1 || J->n * J->kp < 32768) { dq_part(J, simd, 0, 1); return; } /* small: no pool wake-up */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int part = 0; part < threads; part++) dq_part(J, simd, part, threads);
}
#endif
