/* The SIMD tiles of the batch GEMM in lowbit.c (`tiles`), included once per instruction set: BL_ATTR, BL_FN(name),
 * BL_VNNI as for lowbit_rows.h, and BL_TM x BL_TN (activation rows x columns of eight outputs per register tile).
 *
 * Vectorised across outputs, not along K: each 32-bit lane of an accumulator is one output, and a 32-byte weight
 * vector holds, for eight outputs, four consecutive codes per bit plane (byte 4 * lane + j, plane p: code
 * 4 * p + j of the vector's run). Four activation codes are broadcast to every lane, so a block's integer dots
 * need no horizontal sums, and the block's scaling is one vector operation per eight outputs. Dots are exact:
 * with VNNI vpdpbusd adds four u8 x s8 products into 32 bits; without, vpmaddubsw pair sums (at most
 * 2 * 15 * 127 = 3810 for 4-bit codes) are added in 16 bits for at most eight instructions (30480) and widened. */

/* rows r0 .. r0 + RM - 1 against columns c0 .. c0 + RN - 1 (RM, RN constants once inlined) over all of K */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(ctile)(const TJob *J, int64_t c0, int64_t r0,
                                                                   const int bits, const int RM, const int RN) {
    const int per = 8 / bits;
    const int64_t vpb = J->xb / (4 * per);           /* 32-byte vectors per activation block */
    const int64_t cbytes = J->kp * bits;             /* bytes of one column of eight outputs */
    const int64_t wide = bits == 4 ? 4 : vpb;        /* vectors summed in 16 bits before widening (no VNNI) */
    const __m256i maskv = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
    const __m256i multv = _mm256_set1_epi32(J->mult);
    const int8_t *xr[BL_TM];
    /* the tile's panel (c0 starts one, RN is its width): vector kv of column t at (kv * RN + t) * 32, one stream */
    const uint8_t *wp = J->w + c0 * cbytes;
    __m256 f[BL_TM][BL_TN];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
        xr[i] = J->xq + (r0 + i) * J->kp;
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) f[i][t] = _mm256_setzero_ps();
    }
    const int64_t bpg = J->g / J->xb; /* activation blocks per weight group: gw counts, no division per block */
    int64_t gw = 0, bi = 0;
    for (int64_t b = 0; b < J->nbx; b++) {
        __m256i a[BL_TM][BL_TN];
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
            for (int t = 0; t < RN; t++) a[i][t] = _mm256_setzero_si256();
        if (BL_TPF && RM == 1)
            for (int64_t c = 0; c < vpb * RN * 32; c += 64) TILE_PREFETCH(J, wp + b * vpb * RN * 32 + c);
        for (int64_t v0 = 0; v0 < vpb; v0 += wide) {
#if !BL_VNNI
            __m256i s[BL_TM][BL_TN];
#pragma GCC unroll 8
            for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
                for (int t = 0; t < RN; t++) s[i][t] = _mm256_setzero_si256();
#endif
#if !BL_VNNI /* sixteen registers: unrolled, GCC spilled the pair sums of a 4-bit run */
#pragma GCC unroll 1
#endif
            for (int64_t v = v0; v < v0 + wide; v++) {
                const int64_t kv = b * vpb + v;
                __m256i wv[BL_TN];
#pragma GCC unroll 8
                for (int t = 0; t < RN; t++) wv[t] = _mm256_loadu_si256((const __m256i *)(wp + (kv * RN + t) * 32));
#pragma GCC unroll 8
                for (int p = 0; p < per; p++) {
                    __m256i u[BL_TN];
#pragma GCC unroll 8
                    for (int t = 0; t < RN; t++) u[t] = _mm256_and_si256(_mm256_srli_epi16(wv[t], bits * p), maskv);
#pragma GCC unroll 8
                    for (int i = 0; i < RM; i++) {
                        int32_t four;
                        memcpy(&four, xr[i] + kv * 4 * per + 4 * p, 4);
                        const __m256i x4 = _mm256_set1_epi32(four);
#pragma GCC unroll 8
                        for (int t = 0; t < RN; t++)
#if BL_VNNI
                            a[i][t] = _mm256_dpbusd_epi32(a[i][t], u[t], x4);
#else
                            s[i][t] = _mm256_add_epi16(s[i][t], _mm256_maddubs_epi16(u[t], x4));
#endif
                    }
                }
            }
#if !BL_VNNI
#pragma GCC unroll 8
            for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
                for (int t = 0; t < RN; t++) a[i][t] = _mm256_add_epi32(a[i][t], _mm256_madd_epi16(s[i][t], ones));
#endif
        }
        /* block b: float(mult * dot - off * xsum) * (weight scale * activation scale), added in block order */
        __m256 wsc[BL_TN];
        __m256i offv[BL_TN];
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) {
            const int64_t at = ((c0 + t) * J->nbw + gw) * 8;
            wsc[t] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(J->ws + at)));
            offv[t] = J->zo ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(J->zo + at)))
                            : _mm256_set1_epi32(J->off);
        }
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            const __m256 sx = _mm256_set1_ps(J->xs[(r0 + i) * J->nbx + b]);
            const __m256i xsum = _mm256_set1_epi32(J->xsum[(r0 + i) * J->nbx + b]);
#pragma GCC unroll 8
            for (int t = 0; t < RN; t++) {
                __m256i dot = J->mult == 1 ? a[i][t] : _mm256_mullo_epi32(multv, a[i][t]);
                __m256i d = _mm256_sub_epi32(dot, _mm256_mullo_epi32(offv[t], xsum));
                f[i][t] = _mm256_add_ps(f[i][t], _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(wsc[t], sx)));
            }
        }
        if (++bi == bpg) { bi = 0; gw++; }
    }
    (void)ones;
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
        for (int t = 0; t < RN; t++) {
            store8(J->y + (r0 + i) * J->n + (c0 + t) * 8, f[i][t], J->n - (c0 + t) * 8);
        }
}

/* columns c0 .. c1 (a multiple of BL_TN apart but for the last) against every row, in chunks of TILE_ROWS rows
 * (a chunk's activations stay in L2 while every column passes over them) */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(tiles_kernel)(const TJob *J, int64_t c0, int64_t c1,
                                                                           const int bits) {
    for (int64_t m0 = 0; m0 < J->m; m0 += TILE_ROWS) {
        const int64_t m1 = m0 + TILE_ROWS < J->m ? m0 + TILE_ROWS : J->m;
        for (int64_t c = c0; c < c1; c += BL_TN) {
            const int rn = c1 - c < BL_TN ? (int)(c1 - c) : BL_TN;
            int64_t r = m0;
            if (rn == BL_TN) {
                for (; r + BL_TM <= m1; r += BL_TM) BL_FN(ctile)(J, c, r, bits, BL_TM, BL_TN);
                for (; r < m1; r++) BL_FN(ctile)(J, c, r, bits, 1, BL_TN);
            } else if (rn == 2) { /* the last columns of a three-wide tiling: unpacked once for both */
                for (; r + BL_TM <= m1; r += BL_TM) BL_FN(ctile)(J, c, r, bits, BL_TM, 2);
                for (; r < m1; r++) BL_FN(ctile)(J, c, r, bits, 1, 2);
            } else {
                for (; r + BL_TM <= m1; r += BL_TM) BL_FN(ctile)(J, c, r, bits, BL_TM, 1);
                for (; r < m1; r++) BL_FN(ctile)(J, c, r, bits, 1, 1);
            }
        }
    }
}

BL_ATTR static void BL_FN(tiles)(const TJob *J, int64_t c0, int64_t c1) {
    if (J->bits == 4) BL_FN(tiles_kernel)(J, c0, c1, 4);
    else if (J->bits == 2) BL_FN(tiles_kernel)(J, c0, c1, 2);
    else BL_FN(tiles_kernel)(J, c0, c1, 1);
}
