/* Binary-weight GEMV by table lookup (the idea of T-MAC, Wei et al. 2024): 1-bit codes times int8 activations
 * without expanding a single weight bit.
 *
 * y[n] = sum over activation blocks b, in order, of  float(mult * <u_n,b, xq_b> - off * sum(xq_b)) * (ws * xs[b])
 *
 * u are the unsigned codes (0 or 1; w = scale * (mult * u - off)), xq the activations quantised to int8 per block
 * of xb elements as in lowbit.c. For every four activations the sixteen sums of their subsets are a table; a
 * nibble of four weight bits is an index into it, so one vpshufb gives 32 rows' partial dots of four codes.
 * A sum lies in [-508, 508]; plus 512 it is a 10-bit number kept as two 5-bit tables (low and high bits), so
 * eight lookups add up in bytes (8 * 31 = 248) before they are widened: exact integers on any AVX2 CPU, no
 * VNNI. Lookup and add cost about 13 instructions per 256 codes against 32 for expanding bit planes; with
 * AVX-512 BW one 512-bit register holds two tiles, half the instructions again.
 *
 * Weight layout (made once in Python): tiles of 32 rows; per tile, per column of eight codes, 32 bytes (one a
 * row) per bit plane, bit i of a byte holding bit p of code 8c + i: vector kv = column * planes + plane. Tiles are
 * stored in panels of the path's width (panel_tiles: two for AVX-512 BW, whose register holds two tiles; the
 * last panel holds what is left): vector kv of a panel's tile i at (kv * width + i) * 32, so a pair of tiles is
 * one 64-byte load and one stream from memory. Scales are fp16 bits, 32 per (tile, group) in row order. The
 * portable path does the same integer and float operations in the same order, so both give the same bits.
 *
 * Two-bit codes (planes = 2: u = b0 + 2 b1) look both planes up in the same tables; the planes' byte sums are
 * widened with plane 1 doubled. 16-bit words wrap, so only the result must fit: eight columns' weighted dot,
 * at most 3 * 64 * 127 = 24384; a block of sixteen columns is summed as two halves in 32 bits. They may carry
 * an offset per row and weight group (zo: zero point + off, one byte, laid out as the scales) in place of off.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include "common.h"

typedef struct {
    const uint8_t *w;    /* (tiles, kp / 8, planes, 32) */
    const uint16_t *ws;  /* (tiles, nbw, 32) fp16 bits */
    const uint8_t *zo;   /* (tiles, nbw, 32) offsets per row and group (two planes only), or NULL: off for all */
    const uint8_t *tab;  /* (kp / 4, 32): the low 5 bits of the 16 subset sums + 512, then the high 5 bits */
    const int8_t *xq;    /* (kp) */
    const float *xs;     /* (nbx) */
    const int32_t *xsum; /* (nbx) */
    const int32_t *gw;   /* (nbx) the weight group of each activation block */
    float *y;            /* (tiles * 32) */
    int64_t kp, xb, nbw, tiles, tn; /* tn: tiles per panel of w */
    int mult, off, planes;
    int pf2;             /* the AVX-512 pairs ask BL_PF ahead into L2, BL_PF_L1 into L1 (an Intel CPU), else L1 */
} LJob;

/* tile t's first 32-byte vector; *stride: the distance between its vectors (its panel's width times 32) */
static inline const uint8_t *tile_at(const LJob *J, int64_t t, int64_t *stride) {
    const int64_t tile_bytes = J->kp / 8 * J->planes * 32, full = J->tiles / J->tn * J->tn;
    const int64_t first = t < full ? t / J->tn * J->tn : full;
    *stride = (t < full ? J->tn : J->tiles - full) * 32;
    return J->w + first * tile_bytes + (t - first) * 32;
}

#define BIAS 512 /* added to every subset sum so both 5-bit halves are unsigned */

/* the tables of every group of four activations: entry c is the sum of x[4q + i] over the set bits i of c */
static void build_tables(const int8_t *xq, int64_t kp, uint8_t *tab) {
    for (int64_t q = 0; q < kp / 4; q++) {
        const int8_t *x = xq + 4 * q;
        uint8_t *t = tab + 32 * q;
        for (int c = 0; c < 16; c++) {
            int s = BIAS + (c & 1 ? x[0] : 0) + (c & 2 ? x[1] : 0) + (c & 4 ? x[2] : 0) + (c & 8 ? x[3] : 0);
            t[c] = (uint8_t)(s & 31);
            t[16 + c] = (uint8_t)(s >> 5);
        }
    }
}

#ifdef BL_X86
/* the same tables, one group per step: the sixteen sums as int16 lanes (a set bit's mask selects x_i), then the
 * low and high five bits packed to bytes in the layout above */
__attribute__((target("avx2"))) static void build_tables_avx2(const int8_t *xq, int64_t kp, uint8_t *tab) {
    const __m256i m0 = _mm256_setr_epi16(0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1);
    const __m256i m1 = _mm256_setr_epi16(0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1);
    const __m256i m2 = _mm256_setr_epi16(0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0, -1, -1, -1, -1);
    const __m256i m3 = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i bias = _mm256_set1_epi16(BIAS), five = _mm256_set1_epi16(31);
    for (int64_t q = 0; q < kp / 4; q++) {
        const int8_t *x = xq + 4 * q;
        __m256i t = _mm256_add_epi16(
            _mm256_add_epi16(_mm256_and_si256(_mm256_set1_epi16(x[0]), m0), _mm256_and_si256(_mm256_set1_epi16(x[1]), m1)),
            _mm256_add_epi16(_mm256_and_si256(_mm256_set1_epi16(x[2]), m2), _mm256_and_si256(_mm256_set1_epi16(x[3]), m3)));
        t = _mm256_add_epi16(t, bias);
        /* packus interleaves 128-bit lanes: [lo 0-7, hi 0-7 | lo 8-15, hi 8-15], put back in order */
        __m256i p = _mm256_packus_epi16(_mm256_and_si256(t, five), _mm256_srli_epi16(t, 5));
        _mm256_storeu_si256((__m256i *)(tab + 32 * q), _mm256_permute4x64_epi64(p, 0xD8));
    }
}
#endif

static void tiles_portable(const LJob *J, int64_t t0, int64_t t1) {
    const int64_t nbx = J->kp / J->xb, cpb = J->xb / 8, np = J->planes;
    for (int64_t t = t0; t < t1; t++) {
        int64_t st;
        const uint8_t *wt = tile_at(J, t, &st);
        const uint16_t *wst = J->ws + t * J->nbw * 32;
        for (int r = 0; r < 32; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nbx; b++) {
                int32_t dot = 0;
                for (int64_t c = b * cpb; c < (b + 1) * cpb; c++) {
                    for (int64_t p = 0; p < np; p++) {
                        const uint8_t byte = wt[(c * np + p) * st + r];
                        for (int i = 0; i < 8; i++)
                            if (byte >> i & 1) dot += J->xq[c * 8 + i] * (1 << p);
                    }
                }
                const int32_t off = J->zo ? (int32_t)J->zo[(t * J->nbw + J->gw[b]) * 32 + r] : J->off;
                int32_t d = J->mult * dot - off * J->xsum[b];
                acc = acc + (float)d * (half_to_float(wst[J->gw[b] * 32 + r]) * J->xs[b]);
            }
            J->y[t * 32 + r] = acc;
        }
    }
}

#ifdef BL_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define BL_PF 4096 /* bytes of weights prefetched ahead, as in lowbit.c */
#define BL_PF_L1 512 /* an Intel CPU's AVX-512 pairs: into L2 far, into L1 near, more misses in flight */

/* one line of weights asked for ahead of the AVX-512 pairs (see pf2; prefetch_ahead, common.h) */
#define LUT_PREFETCH(J, at) prefetch_ahead((at), (J)->pf2, BL_PF, BL_PF_L1, BL_PF)

/* rows d (i32x8) of one block into the float accumulator: float(mult * d - off * xsum) * (ws * xs) */
AVX2 static inline __m256 block_add(__m256 acc, __m256i d, const uint16_t *ws, __m256i multv, __m256i offx,
                                    __m256 xsv) {
    __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_mullo_epi32(multv, d), offx));
    __m256 s = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)ws)), xsv);
    return _mm256_add_ps(acc, _mm256_mul_ps(f, s));
}

/* cpb columns of eight codes per activation block (4, 8 or 16), a constant once inlined */
AVX2 static inline __attribute__((always_inline)) void tiles_avx2_kernel(const LJob *J, int64_t t0, int64_t t1,
                                                                         const int cpb) {
    const int64_t nbx = J->kp / J->xb;
    const __m256i low4 = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256i bias = _mm256_set1_epi16((int16_t)(BIAS * 2 * cpb)), multv = _mm256_set1_epi32(J->mult);
    for (int64_t t = t0; t < t1; t++) {
        int64_t st;
        const uint8_t *wt = tile_at(J, t, &st);
        const uint16_t *wst = J->ws + t * J->nbw * 32;
        /* unpacking bytes to 16 bits interleaves within 128-bit lanes: f0 holds rows 0-7, f1 16-23, f2 8-15,
         * f3 24-31 */
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
        for (int64_t b = 0; b < nbx; b++) {
            __m256i l0 = zero, l1 = zero, h0 = zero, h1 = zero;
            for (int c0 = 0; c0 < cpb; c0 += 4) { /* eight lookups per byte lane, then widened */
                __m256i al = zero, ah = zero;
                for (int c = c0; c < c0 + 4; c++) {
                    const int64_t col = b * cpb + c;
                    const uint8_t *src = wt + col * st;
                    if (st > 32 || !(c & 1)) _mm_prefetch((const char *)(src + BL_PF), _MM_HINT_T0); /* a line each */
                    __m256i v = _mm256_loadu_si256((const __m256i *)src);
                    __m256i il = _mm256_and_si256(v, low4), ih = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                    const uint8_t *tq = J->tab + col * 64;
                    __m256i tl0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tq));
                    __m256i th0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 16)));
                    __m256i tl1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 32)));
                    __m256i th1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 48)));
                    al = _mm256_add_epi8(al, _mm256_add_epi8(_mm256_shuffle_epi8(tl0, il), _mm256_shuffle_epi8(tl1, ih)));
                    ah = _mm256_add_epi8(ah, _mm256_add_epi8(_mm256_shuffle_epi8(th0, il), _mm256_shuffle_epi8(th1, ih)));
                }
                l0 = _mm256_add_epi16(l0, _mm256_unpacklo_epi8(al, zero));
                l1 = _mm256_add_epi16(l1, _mm256_unpackhi_epi8(al, zero));
                h0 = _mm256_add_epi16(h0, _mm256_unpacklo_epi8(ah, zero));
                h1 = _mm256_add_epi16(h1, _mm256_unpackhi_epi8(ah, zero));
            }
            /* 32 * high + low - bias: at most 32 * 992 + 992 before the bias, inside int16 */
            __m256i s0 = _mm256_sub_epi16(_mm256_add_epi16(_mm256_slli_epi16(h0, 5), l0), bias);
            __m256i s1 = _mm256_sub_epi16(_mm256_add_epi16(_mm256_slli_epi16(h1, 5), l1), bias);
            const uint16_t *wsb = wst + J->gw[b] * 32;
            const __m256i offx = _mm256_set1_epi32(J->off * J->xsum[b]);
            const __m256 xsv = _mm256_set1_ps(J->xs[b]);
            f0 = block_add(f0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s0)), wsb, multv, offx, xsv);
            f1 = block_add(f1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s0, 1)), wsb + 16, multv, offx, xsv);
            f2 = block_add(f2, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s1)), wsb + 8, multv, offx, xsv);
            f3 = block_add(f3, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s1, 1)), wsb + 24, multv, offx, xsv);
        }
        float *y = J->y + t * 32;
        _mm256_storeu_ps(y, f0);
        _mm256_storeu_ps(y + 8, f2);
        _mm256_storeu_ps(y + 16, f1);
        _mm256_storeu_ps(y + 24, f3);
    }
}

/* two bit planes (module comment): cpb columns per block, summed in halves of at most eight */
AVX2 static inline __attribute__((always_inline)) void tiles2_avx2_kernel(const LJob *J, int64_t t0, int64_t t1,
                                                                          const int cpb) {
    const int64_t nbx = J->kp / J->xb;
    const int half = cpb < 8 ? cpb : 8;
    const __m256i low4 = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256i bias = _mm256_set1_epi16((int16_t)(BIAS * 2 * half * 3)), multv = _mm256_set1_epi32(J->mult);
    for (int64_t t = t0; t < t1; t++) {
        int64_t st;
        const uint8_t *wt = tile_at(J, t, &st);
        const uint16_t *wst = J->ws + t * J->nbw * 32;
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0; /* rows 0-7, 16-23, 8-15, 24-31 */
        for (int64_t b = 0; b < nbx; b++) {
            __m256i d0 = zero, d1 = zero, d2 = zero, d3 = zero;
            for (int h = 0; h < cpb; h += half) {
                __m256i l0 = zero, l1 = zero, h0 = zero, h1 = zero;
                for (int c0 = h; c0 < h + half; c0 += 4) {
                    __m256i al0 = zero, ah0 = zero, al1 = zero, ah1 = zero; /* per plane: eight lookups a byte */
                    for (int c = c0; c < c0 + 4; c++) {
                        const int64_t col = b * cpb + c;
                        const uint8_t *src = wt + 2 * col * st; /* plane 0, then plane 1 at src + st */
                        _mm_prefetch((const char *)(src + BL_PF), _MM_HINT_T0);
                        if (st > 32) _mm_prefetch((const char *)(src + st + BL_PF), _MM_HINT_T0);
                        const uint8_t *tq = J->tab + col * 64;
                        __m256i tl0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tq));
                        __m256i th0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 16)));
                        __m256i tl1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 32)));
                        __m256i th1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tq + 48)));
                        __m256i v = _mm256_loadu_si256((const __m256i *)src);
                        __m256i il = _mm256_and_si256(v, low4), ih = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                        al0 = _mm256_add_epi8(al0, _mm256_add_epi8(_mm256_shuffle_epi8(tl0, il), _mm256_shuffle_epi8(tl1, ih)));
                        ah0 = _mm256_add_epi8(ah0, _mm256_add_epi8(_mm256_shuffle_epi8(th0, il), _mm256_shuffle_epi8(th1, ih)));
                        v = _mm256_loadu_si256((const __m256i *)(src + st));
                        il = _mm256_and_si256(v, low4), ih = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                        al1 = _mm256_add_epi8(al1, _mm256_add_epi8(_mm256_shuffle_epi8(tl0, il), _mm256_shuffle_epi8(tl1, ih)));
                        ah1 = _mm256_add_epi8(ah1, _mm256_add_epi8(_mm256_shuffle_epi8(th0, il), _mm256_shuffle_epi8(th1, ih)));
                    }
                    l0 = _mm256_add_epi16(l0, _mm256_add_epi16(_mm256_unpacklo_epi8(al0, zero),
                                                               _mm256_slli_epi16(_mm256_unpacklo_epi8(al1, zero), 1)));
                    l1 = _mm256_add_epi16(l1, _mm256_add_epi16(_mm256_unpackhi_epi8(al0, zero),
                                                               _mm256_slli_epi16(_mm256_unpackhi_epi8(al1, zero), 1)));
                    h0 = _mm256_add_epi16(h0, _mm256_add_epi16(_mm256_unpacklo_epi8(ah0, zero),
                                                               _mm256_slli_epi16(_mm256_unpacklo_epi8(ah1, zero), 1)));
                    h1 = _mm256_add_epi16(h1, _mm256_add_epi16(_mm256_unpackhi_epi8(ah0, zero),
                                                               _mm256_slli_epi16(_mm256_unpackhi_epi8(ah1, zero), 1)));
                }
                __m256i s0 = _mm256_sub_epi16(_mm256_add_epi16(_mm256_slli_epi16(h0, 5), l0), bias);
                __m256i s1 = _mm256_sub_epi16(_mm256_add_epi16(_mm256_slli_epi16(h1, 5), l1), bias);
                d0 = _mm256_add_epi32(d0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s0)));
                d1 = _mm256_add_epi32(d1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s0, 1)));
                d2 = _mm256_add_epi32(d2, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s1)));
                d3 = _mm256_add_epi32(d3, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s1, 1)));
            }
            const uint16_t *wsb = wst + J->gw[b] * 32;
            const __m256 xsv = _mm256_set1_ps(J->xs[b]);
            __m256i o0, o1, o2, o3; /* each row's offset times the block's code sum */
            if (J->zo) {
                const uint8_t *zb = J->zo + (t * J->nbw + J->gw[b]) * 32;
                const __m256i xsum = _mm256_set1_epi32(J->xsum[b]);
#define OFFX(o) _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(zb + (o)))), xsum)
                o0 = OFFX(0), o1 = OFFX(16), o2 = OFFX(8), o3 = OFFX(24);
#undef OFFX
            } else {
                o0 = o1 = o2 = o3 = _mm256_set1_epi32(J->off * J->xsum[b]);
            }
            f0 = block_add(f0, d0, wsb, multv, o0, xsv);
            f1 = block_add(f1, d1, wsb + 16, multv, o1, xsv);
            f2 = block_add(f2, d2, wsb + 8, multv, o2, xsv);
            f3 = block_add(f3, d3, wsb + 24, multv, o3, xsv);
        }
        float *y = J->y + t * 32;
        _mm256_storeu_ps(y, f0);
        _mm256_storeu_ps(y + 8, f2);
        _mm256_storeu_ps(y + 16, f1);
        _mm256_storeu_ps(y + 24, f3);
    }
}

AVX2 static void tiles_avx2(const LJob *J, int64_t t0, int64_t t1) {
    if (J->planes == 2) {
        switch (J->xb / 8) {
        case 4: tiles2_avx2_kernel(J, t0, t1, 4); return;
        case 8: tiles2_avx2_kernel(J, t0, t1, 8); return;
        default: tiles2_avx2_kernel(J, t0, t1, 16); return;
        }
    }
    switch (J->xb / 8) {
    case 4: tiles_avx2_kernel(J, t0, t1, 4); return;
    case 8: tiles_avx2_kernel(J, t0, t1, 8); return;
    default: tiles_avx2_kernel(J, t0, t1, 16); return;
    }
}

/* ---- AVX-512 BW: two tiles a step, one 512-bit vpshufb for 64 rows' lookups (half the AVX2 instructions) ---- */
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw")))

/* 16 rows' block terms: d (i32x16) for the rows whose fp16 scales are ws[0..7] and ws[16..23] */
AVX512 static inline __m512 block_add16(__m512 acc, __m512i d, const uint16_t *ws, __m512i multv, __m512i offx,
                                        __m512 xsv) {
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)ws)),
                                        _mm_loadu_si128((const __m128i *)(ws + 16)), 1);
    __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_mullo_epi32(multv, d), offx));
    return _mm512_add_ps(acc, _mm512_mul_ps(f, _mm512_mul_ps(_mm512_cvtph_ps(h), xsv)));
}

AVX512 static inline void store16(float *y, __m512 f) { /* rows 0-7 and 16-23 of y */
    _mm256_storeu_ps(y, _mm512_castps512_ps256(f));
    _mm256_storeu_ps(y + 16, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
}

/* tiles t, t + 1 as the four 128-bit lanes of a register: rows A 0-15, A 16-31, B 0-15, B 16-31 */
AVX512 static inline __attribute__((always_inline)) void pair_avx512_kernel(const LJob *J, int64_t t, const int cpb) {
    const int64_t cols = J->kp / 8, nbx = J->kp / J->xb;
    const __m512i low4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    const __m512i bias = _mm512_set1_epi16((int16_t)(BIAS * 2 * cpb)), multv = _mm512_set1_epi32(J->mult);
    const uint8_t *wp = J->w + t * cols * 32; /* the pair's panel: column col of both tiles at col * 64 */
    const uint16_t *sa = J->ws + t * J->nbw * 32, *sb = sa + J->nbw * 32;
    /* after unpacking to 16 bits: fa0 rows A 0-7 and 16-23, fa1 A 8-15 and 24-31, fb0 / fb1 the same of B */
    __m512 fa0 = _mm512_setzero_ps(), fa1 = fa0, fb0 = fa0, fb1 = fa0;
    for (int64_t b = 0; b < nbx; b++) {
        __m512i l0 = zero, l1 = zero, h0 = zero, h1 = zero;
        for (int c0 = 0; c0 < cpb; c0 += 4) {
            __m512i al = zero, ah = zero;
            for (int c = c0; c < c0 + 4; c++) {
                const int64_t col = b * cpb + c;
                LUT_PREFETCH(J, wp + col * 64);
                __m512i v = _mm512_loadu_si512((const void *)(wp + col * 64));
                __m512i il = _mm512_and_si512(v, low4), ih = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                const uint8_t *tq = J->tab + col * 64;
                __m512i tl0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tq));
                __m512i th0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 16)));
                __m512i tl1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 32)));
                __m512i th1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 48)));
                al = _mm512_add_epi8(al, _mm512_add_epi8(_mm512_shuffle_epi8(tl0, il), _mm512_shuffle_epi8(tl1, ih)));
                ah = _mm512_add_epi8(ah, _mm512_add_epi8(_mm512_shuffle_epi8(th0, il), _mm512_shuffle_epi8(th1, ih)));
            }
            l0 = _mm512_add_epi16(l0, _mm512_unpacklo_epi8(al, zero));
            l1 = _mm512_add_epi16(l1, _mm512_unpackhi_epi8(al, zero));
            h0 = _mm512_add_epi16(h0, _mm512_unpacklo_epi8(ah, zero));
            h1 = _mm512_add_epi16(h1, _mm512_unpackhi_epi8(ah, zero));
        }
        __m512i s0 = _mm512_sub_epi16(_mm512_add_epi16(_mm512_slli_epi16(h0, 5), l0), bias);
        __m512i s1 = _mm512_sub_epi16(_mm512_add_epi16(_mm512_slli_epi16(h1, 5), l1), bias);
        const int64_t gofs = J->gw[b] * 32;
        const __m512i offx = _mm512_set1_epi32(J->off * J->xsum[b]);
        const __m512 xsv = _mm512_set1_ps(J->xs[b]);
        fa0 = block_add16(fa0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s0)), sa + gofs, multv, offx, xsv);
        fb0 = block_add16(fb0, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s0, 1)), sb + gofs, multv, offx, xsv);
        fa1 = block_add16(fa1, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s1)), sa + gofs + 8, multv, offx, xsv);
        fb1 = block_add16(fb1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s1, 1)), sb + gofs + 8, multv, offx, xsv);
    }
    float *ya = J->y + t * 32, *yb = ya + 32;
    store16(ya, fa0);
    store16(ya + 8, fa1);
    store16(yb, fb0);
    store16(yb + 8, fb1);
}

/* one plane's lookups of a column for both tiles (their 64 bytes at src) into the byte sums al, ah */
AVX512 static inline __attribute__((always_inline)) void lookup2(const uint8_t *src, __m512i tl0, __m512i th0,
                                                                __m512i tl1, __m512i th1, __m512i low4,
                                                                __m512i *al, __m512i *ah) {
    __m512i v = _mm512_loadu_si512((const void *)src);
    __m512i il = _mm512_and_si512(v, low4), ih = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    *al = _mm512_add_epi8(*al, _mm512_add_epi8(_mm512_shuffle_epi8(tl0, il), _mm512_shuffle_epi8(tl1, ih)));
    *ah = _mm512_add_epi8(*ah, _mm512_add_epi8(_mm512_shuffle_epi8(th0, il), _mm512_shuffle_epi8(th1, ih)));
}

/* the two-plane form of pair_avx512_kernel (as tiles2_avx2_kernel: halves of at most eight columns) */
AVX512 static inline __attribute__((always_inline)) void pair2_avx512_kernel(const LJob *J, int64_t t, const int cpb) {
    const int64_t cols = J->kp / 8, nbx = J->kp / J->xb;
    const int half = cpb < 8 ? cpb : 8;
    const __m512i low4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    const __m512i bias = _mm512_set1_epi16((int16_t)(BIAS * 2 * half * 3)), multv = _mm512_set1_epi32(J->mult);
    /* the pair's panel: plane p of column col of both tiles at (2 col + p) * 64 */
    const uint8_t *wp = J->w + t * cols * 64;
    const uint16_t *sa = J->ws + t * J->nbw * 32, *sb = sa + J->nbw * 32;
    __m512 fa0 = _mm512_setzero_ps(), fa1 = fa0, fb0 = fa0, fb1 = fa0;
    for (int64_t b = 0; b < nbx; b++) {
        __m512i da0 = zero, da1 = zero, db0 = zero, db1 = zero;
        for (int h = 0; h < cpb; h += half) {
            __m512i l0 = zero, l1 = zero, h0 = zero, h1 = zero;
            for (int c0 = h; c0 < h + half; c0 += 4) {
                __m512i al0 = zero, ah0 = zero, al1 = zero, ah1 = zero;
                for (int c = c0; c < c0 + 4; c++) {
                    const int64_t col = b * cpb + c;
                    LUT_PREFETCH(J, wp + col * 128);
                    LUT_PREFETCH(J, wp + col * 128 + 64);
                    const uint8_t *tq = J->tab + col * 64;
                    __m512i tl0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tq));
                    __m512i th0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 16)));
                    __m512i tl1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 32)));
                    __m512i th1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tq + 48)));
                    lookup2(wp + col * 128, tl0, th0, tl1, th1, low4, &al0, &ah0);
                    lookup2(wp + col * 128 + 64, tl0, th0, tl1, th1, low4, &al1, &ah1);
                }
                l0 = _mm512_add_epi16(l0, _mm512_add_epi16(_mm512_unpacklo_epi8(al0, zero),
                                                           _mm512_slli_epi16(_mm512_unpacklo_epi8(al1, zero), 1)));
                l1 = _mm512_add_epi16(l1, _mm512_add_epi16(_mm512_unpackhi_epi8(al0, zero),
                                                           _mm512_slli_epi16(_mm512_unpackhi_epi8(al1, zero), 1)));
                h0 = _mm512_add_epi16(h0, _mm512_add_epi16(_mm512_unpacklo_epi8(ah0, zero),
                                                           _mm512_slli_epi16(_mm512_unpacklo_epi8(ah1, zero), 1)));
                h1 = _mm512_add_epi16(h1, _mm512_add_epi16(_mm512_unpackhi_epi8(ah0, zero),
                                                           _mm512_slli_epi16(_mm512_unpackhi_epi8(ah1, zero), 1)));
            }
            __m512i s0 = _mm512_sub_epi16(_mm512_add_epi16(_mm512_slli_epi16(h0, 5), l0), bias);
            __m512i s1 = _mm512_sub_epi16(_mm512_add_epi16(_mm512_slli_epi16(h1, 5), l1), bias);
            da0 = _mm512_add_epi32(da0, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s0)));
            db0 = _mm512_add_epi32(db0, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s0, 1)));
            da1 = _mm512_add_epi32(da1, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s1)));
            db1 = _mm512_add_epi32(db1, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s1, 1)));
        }
        const int64_t gofs = J->gw[b] * 32;
        const __m512 xsv = _mm512_set1_ps(J->xs[b]);
        __m512i oa0, ob0, oa1, ob1; /* rows o..o+7 and o+16..o+23 of a tile: offsets times the block's code sum */
        if (J->zo) {
            const uint8_t *za = J->zo + (t * J->nbw + J->gw[b]) * 32, *zb = za + J->nbw * 32;
            const __m512i xsum = _mm512_set1_epi32(J->xsum[b]);
#define OFFX16(z) _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(z)), \
                                                          _mm_loadl_epi64((const __m128i *)((z) + 16)))), xsum)
            oa0 = OFFX16(za), ob0 = OFFX16(zb), oa1 = OFFX16(za + 8), ob1 = OFFX16(zb + 8);
#undef OFFX16
        } else {
            oa0 = ob0 = oa1 = ob1 = _mm512_set1_epi32(J->off * J->xsum[b]);
        }
        fa0 = block_add16(fa0, da0, sa + gofs, multv, oa0, xsv);
        fb0 = block_add16(fb0, db0, sb + gofs, multv, ob0, xsv);
        fa1 = block_add16(fa1, da1, sa + gofs + 8, multv, oa1, xsv);
        fb1 = block_add16(fb1, db1, sb + gofs + 8, multv, ob1, xsv);
    }
    float *ya = J->y + t * 32, *yb = ya + 32;
    store16(ya, fa0);
    store16(ya + 8, fa1);
    store16(yb, fb0);
    store16(yb + 8, fb1);
}

AVX512 static void tiles_avx512(const LJob *J, int64_t t0, int64_t t1) {
    int64_t t = t0;
    for (; t + 2 <= t1; t += 2) {
        if (J->planes == 2) {
            switch (J->xb / 8) {
            case 4: pair2_avx512_kernel(J, t, 4); break;
            case 8: pair2_avx512_kernel(J, t, 8); break;
            default: pair2_avx512_kernel(J, t, 16); break;
            }
            continue;
        }
        switch (J->xb / 8) {
        case 4: pair_avx512_kernel(J, t, 4); break;
        case 8: pair_avx512_kernel(J, t, 8); break;
        default: pair_avx512_kernel(J, t, 16); break;
        }
    }
    if (t < t1) tiles_avx2(J, t, t1); /* an odd tile: the same bits on 256-bit registers */
}
#endif

static void run_tiles(const LJob *J, int64_t t0, int64_t t1, int simd) {
#ifdef BL_X86
    if (simd == 2) { tiles_avx512(J, t0, t1); return; }
    if (simd) { tiles_avx2(J, t0, t1); return; }
#endif
    tiles_portable(J, t0, t1);
}

/* rows' quantised activations and tables, made before the pass over the weights */
typedef struct {
    LJob base;     /* the weights; its row pointers are set per row */
    int64_t rows, n;
    const uint8_t *tab; const int8_t *xq; const float *xs; const int32_t *xsum;
    float *y;
    int64_t tiles;
} Rows;

/* a part's tiles, each (a pair with AVX-512 BW) against every row while its weights are in the cache: one
 * parallel region and one pass over the weights for all rows, where a region per row re-read them */
static void run_part(const void *job, int simd, int part, int parts) {
    const Rows *R = job;
    /* whole panels per part, so a pair never straddles two */
    const int64_t tiles = R->tiles, tn = R->base.tn, units = (tiles + tn - 1) / tn, step = simd == 2 ? 2 : 1;
    const int64_t t0 = units * part / parts * tn, t1 = units * (part + 1) / parts * tn < tiles
                                                      ? units * (part + 1) / parts * tn : tiles;
    const int64_t kp = R->base.kp, nbx = kp / R->base.xb;
    for (int64_t t = t0; t < t1; t += step) {
        const int64_t te = t + step < t1 ? t + step : t1;
        for (int64_t r = 0; r < R->rows; r++) {
            LJob J = R->base;
            J.tab = R->tab + r * kp * 8;
            J.xq = R->xq + r * kp;
            J.xs = R->xs + r * nbx;
            J.xsum = R->xsum + r * nbx;
            J.y = R->y + r * R->n;
            run_tiles(&J, t, te, simd);
        }
    }
}

/* the rows' activations to quantise and the tables to make from them */
typedef struct {
    QuantRows q;
    uint8_t *tab;
} Prep;

/* a part of the rows' quantisation and tables, split as quant_part splits (one row's blocks shared by the threads
 * too); block b's tables are those of its xb / 4 groups of four */
static void prepare_part(const void *job, int simd, int part, int parts) {
    const Prep *P = job;
    const QuantRows *Q = &P->q;
    quant_part(Q, simd, part, parts);
    const int64_t nbx = Q->kp / Q->xb, total = Q->m * nbx;
    for (int64_t i = total * part / parts; i < total * (part + 1) / parts; i++) {
        const int64_t r = i / nbx, lo = (i % nbx) * Q->xb;
        const int8_t *q = Q->xq + r * Q->kp + lo;
        uint8_t *t = P->tab + (r * Q->kp + lo) * 8;
#ifdef BL_X86
        if (simd) { build_tables_avx2(q, Q->xb, t); continue; }
#endif
        build_tables(q, Q->xb, t);
    }
}

/* the path gemv runs for a requested simd on this CPU (each falls back to the one below) */
static int run_path(int simd) {
    if (simd == 2 && !cpu_avx512bw()) simd = 1;
    if (simd && !cpu_avx2()) simd = 0;
    return simd;
}

/* tiles per panel of the weights for a path: AVX-512 BW holds two tiles in a register */
static int64_t panel_width(int simd) { return simd == 2 ? 2 : 1; }

/* panel_tiles(simd): the panel width gemv expects its weights in for a requested simd on this CPU */
static PyObject *panel_tiles(PyObject *self, PyObject *args) {
    int simd;
    if (!PyArg_ParseTuple(args, "i", &simd)) return NULL;
    return PyLong_FromLongLong(panel_width(run_path(simd)));
}

/* activations from which the threads share their quantisation and tables (prep_then_run): lower than the GEMV's,
 * as the tables are most of the work (docs/DESIGN.md, 'A C GEMV for one row') */
#define SHARED_PREP_MIN 2048

#define ROWS_PER_PASS 32 /* rows whose tables (8 bytes per input each) are made before one pass */

/* gemv(w, ws, x, y, m, tiles, k, kp, g, xb, mult, off, simd, threads, planes, zo_or_None): y is
 * (m, tiles * 32); simd: 0 portable, 1 AVX2, 2 AVX-512 BW (each falls back to the one below where the CPU
 * lacks it); planes: bits per code, 1 or 2; zo: offsets per row and group (two planes only) */
static PyObject *gemv(PyObject *self, PyObject *args) {
    Py_buffer w, ws, x, y, zo = {0};
    PyObject *zobj = Py_None;
    Py_ssize_t m, tiles, k, kp, g, xb;
    int mult, off, simd, threads, planes;
    if (!PyArg_ParseTuple(args, "y*y*y*w*nnnnnniiiii|O", &w, &ws, &x, &y, &m, &tiles, &k, &kp, &g, &xb, &mult,
                          &off, &simd, &threads, &planes, &zobj))
        return NULL;
    PyObject *ret = NULL;
    const int has_zo = zobj != Py_None;
    if (has_zo && PyObject_GetBuffer(zobj, &zo, PyBUF_SIMPLE) != 0) goto done;
    int64_t nbw = g > 0 ? kp / g : 0, nbx = xb > 0 ? kp / xb : 0, n = tiles * 32;
    if (!(planes == 1 || planes == 2) || (has_zo && (planes != 2 || zo.len < n * nbw))
        || !(xb == 32 || xb == 64 || xb == 128) || g % xb || kp % g || k > kp
        || w.len < n * kp / 8 * planes
        || ws.len < (Py_ssize_t)(n * nbw * 2) || x.len < (Py_ssize_t)(m * k * 4) || y.len < (Py_ssize_t)(m * n * 4)) {
        PyErr_SetString(PyExc_ValueError, "binlut.gemv: buffer sizes or block sizes do not fit");
        goto done;
    }
    simd = run_path(simd);
    const int64_t chunk = m < ROWS_PER_PASS ? (m > 0 ? m : 1) : ROWS_PER_PASS;
    int8_t *xq = malloc((size_t)(chunk * kp));
    uint8_t *tab = malloc((size_t)(chunk * kp * 8));
    float *xs = malloc((size_t)(chunk * nbx) * sizeof(float));
    int32_t *xsum = malloc((size_t)(chunk * nbx) * sizeof(int32_t)), *gw = malloc((size_t)nbx * sizeof(int32_t));
    if (!xq || !tab || !xs || !xsum || !gw) {
        free(xq); free(tab); free(xs); free(xsum); free(gw);
        PyErr_NoMemory();
        goto done;
    }
    for (int64_t b = 0; b < nbx; b++) gw[b] = (int32_t)(b * xb / g);
    const int64_t tn = panel_width(simd), units = (tiles + tn - 1) / tn;
    int parts = threads < 1 ? 1 : threads;
    if ((int64_t)parts > units) parts = (int)(units > 0 ? units : 1);
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r0 = 0; r0 < m; r0 += chunk) {
        const int64_t rows = m - r0 < chunk ? m - r0 : chunk;
        const Prep P = {{(const float *)x.buf + r0 * k, xq, xs, xsum, rows, k, kp, xb, nbx}, tab};
        const Rows R = {{w.buf, ws.buf, has_zo ? zo.buf : NULL, NULL, NULL, NULL, NULL, gw, NULL, kp, xb, nbw, tiles,
                         tn, mult, off, planes, cpu_intel()},
                        rows, n, tab, xq, xs, xsum, (float *)y.buf + r0 * n, tiles};
        prep_then_run(prepare_part, &P, rows * kp, SHARED_PREP_MIN, run_part, &R, simd, parts);
    }
    Py_END_ALLOW_THREADS
    free(xq); free(tab); free(xs); free(xsum); free(gw);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&w); PyBuffer_Release(&ws); PyBuffer_Release(&x); PyBuffer_Release(&y);
    if (has_zo && zo.obj) PyBuffer_Release(&zo);
    return ret;
}

static PyMethodDef methods[] = {
    {"gemv", gemv, METH_VARARGS, "1- or 2-bit codes x int8 activations by table lookup, tiles split over threads."},
    {"panel_tiles", panel_tiles, METH_VARARGS, "Tiles per panel of the weights gemv expects for a requested simd."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_binlut", "Binary-weight GEMV by table lookup.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__binlut(void) { return PyModule_Create(&module); }
