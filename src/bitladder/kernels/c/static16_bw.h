/* static16 (static16.h) on 512-bit registers, AVX-512 BW: the path of an AVX-512 CPU without VNNI (Skylake-SP).
 *
 * There a zmm vpmaddwd and the vpaddd that accumulates it issue on ports 0 and 5 (p0 + p1 fused), 32 products
 * per two instructions, as many per cycle as fp32's two 512-bit FMA ports; ymm ones share three ports, 24 a cycle.
 * Same arithmetic, same bits: a column is sixteen outputs, a zmm lane one output, two consecutive codes per lane
 * (the weights' layout with 16 lanes), a pair of 16-bit activations broadcast. */

#define S16Z_ATTR __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

/* rows r0 .. r0 + RM - 1 against columns c0 .. c0 + RZ - 1 over all of K */
S16Z_ATTR static inline __attribute__((always_inline)) void s16z_tile(const SJob *J, int64_t c0, int64_t r0,
                                                                      const int RM, const int RZ) {
    __m512i a[S16Z_TM][S16Z_RZ];
    const int16_t *xr[S16Z_TM];
    const int8_t *wc[S16Z_RZ];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) {
        xr[i] = J->xw + (r0 + i) * J->kp;
#pragma GCC unroll 8
        for (int t = 0; t < RZ; t++) a[i][t] = _mm512_setzero_si512();
    }
#pragma GCC unroll 8
    for (int t = 0; t < RZ; t++) wc[t] = J->w + (c0 + t) * J->kp * 16;
#pragma GCC unroll 2
    for (int64_t p = 0; p < J->kp / 2; p++) {
        __m512i wv[S16Z_RZ];
#pragma GCC unroll 8
        for (int t = 0; t < RZ; t++) wv[t] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(wc[t] + 32 * p)));
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            int32_t two;
            memcpy(&two, xr[i] + 2 * p, 4);
            const __m512i x2 = _mm512_set1_epi32(two);
#pragma GCC unroll 8
            for (int t = 0; t < RZ; t++) a[i][t] = _mm512_add_epi32(_mm512_madd_epi16(wv[t], x2), a[i][t]);
        }
    }
    __m512 f[S16Z_TM][S16Z_RZ];
#pragma GCC unroll 8
    for (int t = 0; t < RZ; t++) {
        const __m512 scv = _mm512_loadu_ps(J->sc + (c0 + t) * 16);
        const __m512 bv = J->bias ? _mm512_loadu_ps(J->bias + (c0 + t) * 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            f[i][t] = _mm512_mul_ps(_mm512_cvtepi32_ps(a[i][t]), scv);
            if (J->bias) f[i][t] = _mm512_add_ps(f[i][t], bv);
        }
    }
    /* the outlier channels one at a time over the whole tile, in channel order as the reference adds them */
    for (int64_t j = 0; j < J->ko; j++) {
        __m512 sv[S16Z_RZ];
#pragma GCC unroll 8
        for (int t = 0; t < RZ; t++) sv[t] = _mm512_loadu_ps(J->side + ((c0 + t) * J->ko + j) * 16);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            const __m512 xv = _mm512_set1_ps(J->xo[(r0 + i) * J->ko + j]);
#pragma GCC unroll 8
            for (int t = 0; t < RZ; t++) f[i][t] = _mm512_add_ps(f[i][t], _mm512_mul_ps(xv, sv[t]));
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < RZ; t++) {
        const int64_t left = J->n - (c0 + t) * 16;
        const __mmask16 keep = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) _mm512_mask_storeu_ps(J->y + (r0 + i) * J->n + (c0 + t) * 16, keep, f[i][t]);
    }
}

/* columns c0 .. c1 (a multiple of S16Z_RZ apart but for the last) against rows r0 .. r1 */
S16Z_ATTR static void s16_bw(const SJob *J, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    for (int64_t m0 = r0; m0 < r1; m0 += S16_ROWS) {
        const int64_t m1 = m0 + S16_ROWS < r1 ? m0 + S16_ROWS : r1;
        for (int64_t c = c0; c < c1; c += S16Z_RZ) {
            int64_t r = m0;
            if (c1 - c >= S16Z_RZ) {
                for (; r + S16Z_TM <= m1; r += S16Z_TM) s16z_tile(J, c, r, S16Z_TM, S16Z_RZ);
                switch (m1 - r) { /* the last rows in one tile: each tile reads the columns' weights once */
                case 5: s16z_tile(J, c, r, 5, S16Z_RZ); break;
                case 4: s16z_tile(J, c, r, 4, S16Z_RZ); break;
                case 3: s16z_tile(J, c, r, 3, S16Z_RZ); break;
                case 2: s16z_tile(J, c, r, 2, S16Z_RZ); break;
                case 1: s16z_tile(J, c, r, 1, S16Z_RZ); break;
                default: for (; r < m1; r++) s16z_tile(J, c, r, 1, S16Z_RZ);
                }
            } else {
                for (int64_t t = c; t < c1; t++) {
                    for (r = m0; r + S16Z_TM <= m1; r += S16Z_TM) s16z_tile(J, t, r, S16Z_TM, 1);
                    for (; r < m1; r++) s16z_tile(J, t, r, 1, 1);
                }
            }
        }
    }
}
