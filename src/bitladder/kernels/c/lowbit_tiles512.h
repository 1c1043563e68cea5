/* The batch GEMM's tiles on 512-bit registers (AVX-512 BW), included by lowbit.c after lowbit_tiles.h once per
 * instruction set: BL_ATTR, BL_FN(name) and BL_VNNI as there (same TJob, same panel layout, same bits). Without
 * VNNI (Skylake-SP, and any AVX-512 CPU capped to it) this is the path: Skylake-SP issues 512-bit vpmaddubsw on
 * two ports as it does 256-bit ones, so a zmm register does twice a ymm's work per instruction, and 32 registers
 * hold a 4 x 2 tile without spills.
 *
 * A zmm holds two adjacent columns of a panel (columns 2z and 2z + 1 sit side by side, vector by vector); a panel
 * of odd width ends in a half register, loaded under a mask. Dots are the 256-bit paths': with VNNI vpdpbusd adds
 * four u8 x s8 products into 32 bits; without, pair sums in 16 bits for at most eight instructions of 4-bit codes
 * (8 * 2 * 15 * 127 = 30480), widened by vpmaddwd. */

#ifndef TILES_BW_TM /* activation rows x zmm registers (two columns of eight outputs each) per register tile */
#define TILES_BW_TM 4
#define TILES_BW_RZ 2
#endif

/* eight fp16 scales (or offsets) of a column beside the next column's; the missing column of a half register
 * reads as zeros */
BL_ATTR static inline __m512 BL_FN(bw_scales)(const TJob *J, int64_t c, int64_t gw, int half) {
    const __m128i lo = _mm_loadu_si128((const __m128i *)(J->ws + (c * J->nbw + gw) * 8));
    const __m128i hi = half ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)(J->ws + ((c + 1) * J->nbw + gw) * 8));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

BL_ATTR static inline __m512i BL_FN(bw_offsets)(const TJob *J, int64_t c, int64_t gw, int half) {
    if (!J->zo) return _mm512_set1_epi32(J->off);
    const __m128i lo = _mm_loadl_epi64((const __m128i *)(J->zo + (c * J->nbw + gw) * 8));
    const __m128i hi = half ? _mm_setzero_si128() : _mm_loadl_epi64((const __m128i *)(J->zo + ((c + 1) * J->nbw + gw) * 8));
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(lo, hi));
}

/* rows r0 .. r0 + RM - 1 against the panel's columns c0 .. c0 + RN - 1 (RN = 2 * RZ - half; RM, RZ, half
 * constants once inlined) over all of K */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(bw_ctile)(const TJob *J, int64_t c0, int64_t r0, const int bits,
                                                             const int RM, const int RZ, const int half) {
    const int per = 8 / bits, RN = 2 * RZ - half;
    const int64_t vpb = J->xb / (4 * per);    /* 32-byte vectors per activation block, per column */
    const int64_t cbytes = J->kp * bits;      /* bytes of one column of eight outputs */
    const int64_t wide = bits == 4 ? 4 : vpb; /* vectors summed in 16 bits before widening (no VNNI) */
    const __m512i maskv = _mm512_set1_epi8((char)((1 << bits) - 1)), ones = _mm512_set1_epi16(1);
    const __m512i multv = _mm512_set1_epi32(J->mult);
    const uint8_t *wp = J->w + c0 * cbytes;
    const int8_t *xr[TILES_BW_TM];
    __m512 f[TILES_BW_TM][TILES_BW_RZ];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
        xr[i] = J->xq + (r0 + i) * J->kp;
#pragma GCC unroll 8
        for (int z = 0; z < RZ; z++) f[i][z] = _mm512_setzero_ps();
    }
    const int64_t bpg = J->g / J->xb;
    int64_t gw = 0, bi = 0;
    for (int64_t b = 0; b < J->nbx; b++) {
        __m512i a[TILES_BW_TM][TILES_BW_RZ];
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
            for (int z = 0; z < RZ; z++) a[i][z] = _mm512_setzero_si512();
        if (BL_TPF && RM == 1)
            for (int64_t c = 0; c < vpb * RN * 32; c += 64) TILE_PREFETCH(J, wp + b * vpb * RN * 32 + c);
        for (int64_t v0 = 0; v0 < vpb; v0 += wide) {
#if !BL_VNNI
            __m512i s[TILES_BW_TM][TILES_BW_RZ];
#pragma GCC unroll 8
            for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
                for (int z = 0; z < RZ; z++) s[i][z] = _mm512_setzero_si512();
#pragma GCC unroll 1
#endif
            for (int64_t v = v0; v < v0 + wide; v++) {
                const int64_t kv = b * vpb + v;
                __m512i wv[TILES_BW_RZ];
#pragma GCC unroll 8
                for (int z = 0; z < RZ; z++) {
                    const uint8_t *at = wp + (kv * RN + 2 * z) * 32;
                    wv[z] = half && z == RZ - 1 ? _mm512_maskz_loadu_epi32(0x00FF, at) : _mm512_loadu_si512(at);
                }
#pragma GCC unroll 8
                for (int p = 0; p < per; p++) {
                    __m512i u[TILES_BW_RZ];
#pragma GCC unroll 8
                    for (int z = 0; z < RZ; z++) u[z] = _mm512_and_si512(_mm512_srli_epi16(wv[z], bits * p), maskv);
#pragma GCC unroll 8
                    for (int i = 0; i < RM; i++) {
                        int32_t four;
                        memcpy(&four, xr[i] + kv * 4 * per + 4 * p, 4);
                        const __m512i x4 = _mm512_set1_epi32(four);
#pragma GCC unroll 8
                        for (int z = 0; z < RZ; z++)
#if BL_VNNI
                            a[i][z] = _mm512_dpbusd_epi32(a[i][z], u[z], x4);
#else
                            s[i][z] = _mm512_add_epi16(s[i][z], _mm512_maddubs_epi16(u[z], x4));
#endif
                    }
                }
            }
#if !BL_VNNI
#pragma GCC unroll 8
            for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
                for (int z = 0; z < RZ; z++) a[i][z] = _mm512_add_epi32(a[i][z], _mm512_madd_epi16(s[i][z], ones));
#endif
        }
        /* block b: float(mult * dot - off * xsum) * (weight scale * activation scale), added in block order */
        __m512 wsc[TILES_BW_RZ];
        __m512i offv[TILES_BW_RZ];
#pragma GCC unroll 8
        for (int z = 0; z < RZ; z++) {
            wsc[z] = BL_FN(bw_scales)(J, c0 + 2 * z, gw, half && z == RZ - 1);
            offv[z] = BL_FN(bw_offsets)(J, c0 + 2 * z, gw, half && z == RZ - 1);
        }
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            const __m512 sx = _mm512_set1_ps(J->xs[(r0 + i) * J->nbx + b]);
            const __m512i xsum = _mm512_set1_epi32(J->xsum[(r0 + i) * J->nbx + b]);
#pragma GCC unroll 8
            for (int z = 0; z < RZ; z++) {
                __m512i dot = J->mult == 1 ? a[i][z] : _mm512_mullo_epi32(multv, a[i][z]);
                __m512i d = _mm512_sub_epi32(dot, _mm512_mullo_epi32(offv[z], xsum));
                f[i][z] = _mm512_add_ps(f[i][z], _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wsc[z], sx)));
            }
        }
        if (++bi == bpg) { bi = 0; gw++; }
    }
    (void)ones;
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
        for (int z = 0; z < RZ; z++) {
            const int64_t c = c0 + 2 * z;
            float *y = J->y + (r0 + i) * J->n;
            store8(y + c * 8, _mm512_castps512_ps256(f[i][z]), J->n - c * 8);
            if (!(half && z == RZ - 1)) store8(y + (c + 1) * 8, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f[i][z]), 1)), J->n - (c + 1) * 8);
        }
}

/* one panel (c .. c + rn - 1, rn <= 2 * TILES_BW_RZ) against rows m0 .. m1 - 1, RZ and half as constants */
#define BW_ROWS(RZ_, HALF_)                                                                          \
    do {                                                                                             \
        int64_t r = m0;                                                                              \
        for (; r + TILES_BW_TM <= m1; r += TILES_BW_TM) BL_FN(bw_ctile)(J, c, r, bits, TILES_BW_TM, RZ_, HALF_); \
        for (; r < m1; r++) BL_FN(bw_ctile)(J, c, r, bits, 1, RZ_, HALF_);                                  \
    } while (0)

BL_ATTR static inline __attribute__((always_inline)) void BL_FN(bw_tiles_kernel)(const TJob *J, int64_t c0, int64_t c1,
                                                                    const int bits) {
    const int tn = 2 * TILES_BW_RZ;
    for (int64_t m0 = 0; m0 < J->m; m0 += TILE_ROWS) {
        const int64_t m1 = m0 + TILE_ROWS < J->m ? m0 + TILE_ROWS : J->m;
        for (int64_t c = c0; c < c1; c += tn) {
            const int rn = c1 - c < tn ? (int)(c1 - c) : tn;
            if (rn == tn) BW_ROWS(TILES_BW_RZ, 0);
#if TILES_BW_RZ == 2
            else if (rn == 3) BW_ROWS(2, 1);
            else if (rn == 2) BW_ROWS(1, 0);
#endif
            else BW_ROWS(1, 1);
        }
    }
}
#undef BW_ROWS

BL_ATTR static void BL_FN(tiles512)(const TJob *J, int64_t c0, int64_t c1) {
    if (J->bits == 4) BL_FN(bw_tiles_kernel)(J, c0, c1, 4);
    else if (J->bits == 2) BL_FN(bw_tiles_kernel)(J, c0, c1, 2);
    else BL_FN(bw_tiles_kernel)(J, c0, c1, 1);
}
