/* The SIMD rows of lowbit.c, included once per instruction set: BL_ATTR (the target attribute), BL_FN(name)
 * (the name with its suffix) and BL_VNNI (1: vpdpbusd sums four u8 x s8 products into 32 bits, one instruction
 * where AVX2 needs vpmaddubsw, an add and a widening) and BL_R (activation rows per register tile) are defined by
 * the includer. The integer dots are exact
 * either way, so both give the same bits. */
/* the i32x8 partial dots of activation block i of a group of eight (chunk j = i * cpb + t of the group) for
 * R activation rows at once: each weight chunk is loaded and unpacked once for all R rows. Without VNNI the
 * chunks' 16-bit pair sums are added in 16 bits first (at most 4 * 2 * 15 * 127 = 15240: no overflow), then
 * widened once per block. 8-bit codes are signed: |w| times x with w's sign (2 * 128 * 127 = 32512 fits a
 * 16-bit pair sum, without VNNI), widened per chunk. */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(block_dots)(const uint8_t *src, const int8_t *const *xv,
                                                                        const int i, const int bits, const int cpb,
                                                                        const int R, __m256i *out) {
    const int per = 8 / bits;
    const __m256i maskv = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
    for (int r = 0; r < R; r++) out[r] = _mm256_setzero_si256();
    for (int t = 0; t < cpb; t++) {
        const int j = i * cpb + t;
        if (bits == 8) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(src + j * 32)), a = _mm256_abs_epi8(v);
            for (int r = 0; r < R; r++) {
                __m256i x = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xv[r] + j * 32)), v);
#if BL_VNNI
                out[r] = _mm256_dpbusd_epi32(out[r], a, x);
#else
                out[r] = _mm256_add_epi32(out[r], _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), ones));
#endif
            }
            continue;
        }
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + (j / per) * 32));
        __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, bits * (j % per)), maskv);
        for (int r = 0; r < R; r++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xv[r] + j * 32));
#if BL_VNNI
            out[r] = _mm256_dpbusd_epi32(out[r], u, x); /* four products summed straight into 32 bits */
#else
            out[r] = _mm256_add_epi16(out[r], _mm256_maddubs_epi16(u, x));
#endif
        }
    }
#if !BL_VNNI
    if (bits != 8)
        for (int r = 0; r < R; r++) out[r] = _mm256_madd_epi16(out[r], ones);
#endif
    (void)ones;
}

/* weight row n against activation rows r0 .. r0 + R - 1 (R a constant once inlined): per group of eight
 * blocks, each row's eight block dots are reduced pairwise (hadd) into one i32x8 in block order, so nothing is
 * spilled to memory, then scaled into that row's float lane b % 8. The first tile of a weight row prefetches. */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(tile)(const Job *J, int64_t n, int64_t r0, const int bits,
                                                                  const int cpb, const int R) {
    const int per = 8 / bits;
    const int64_t nbx = J->kp / J->xb;
    const int direct = J->xb == J->g; /* block b uses weight group b: its scales load as one vector */
    const __m256i multv = _mm256_set1_epi32(J->mult);
    const uint8_t *row = J->w + n * J->row_bytes;
    const uint16_t *ws = J->ws + n * J->nbw;
    const uint8_t *zo = J->zo ? J->zo + n * J->nbw : NULL;
    __m256 lanes[R];
    for (int r = 0; r < R; r++) lanes[r] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nbx; b0 += 8) {
        const uint8_t *src = row + (b0 * cpb / per) * 32;
        /* ask for the weights BL_PF bytes ahead: the hardware prefetcher alone leaves the loads waiting */
        if (r0 == 0)
            for (int c = 0; c < 8 * cpb * 32 / per; c += 64) _mm_prefetch((const char *)(src + BL_PF + c), _MM_HINT_T0);
        const int8_t *xv[R];
        for (int r = 0; r < R; r++) xv[r] = J->xq + (r0 + r) * J->kp + b0 * cpb * 32;
        const int64_t left = nbx - b0;
        __m256i a[R], b[R], h01[R], h0[R], h1[R];
#define BD(i, out) do { if ((i) < left) BL_FN(block_dots)(src, xv, i, bits, cpb, R, out); \
                        else for (int r = 0; r < R; r++) (out)[r] = _mm256_setzero_si256(); } while (0)
        BD(0, a); BD(1, b);
        for (int r = 0; r < R; r++) h01[r] = _mm256_hadd_epi32(a[r], b[r]);
        BD(2, a); BD(3, b);
        for (int r = 0; r < R; r++) h0[r] = _mm256_hadd_epi32(h01[r], _mm256_hadd_epi32(a[r], b[r]));
        BD(4, a); BD(5, b);
        for (int r = 0; r < R; r++) h01[r] = _mm256_hadd_epi32(a[r], b[r]);
        BD(6, a); BD(7, b);
        for (int r = 0; r < R; r++) h1[r] = _mm256_hadd_epi32(h01[r], _mm256_hadd_epi32(a[r], b[r]));
#undef BD
        __m256 wsc;
        __m256i off;
        if (direct) { /* scales and offsets of rows are padded by eight, so this never reads past the end */
            wsc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + b0)));
            off = zo ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(zo + b0))) : _mm256_set1_epi32(J->off);
        } else {
            const int32_t *gw = J->gw + b0;
            wsc = _mm256_set_ps(_cvtsh_ss(ws[gw[7]]), _cvtsh_ss(ws[gw[6]]), _cvtsh_ss(ws[gw[5]]), _cvtsh_ss(ws[gw[4]]),
                                _cvtsh_ss(ws[gw[3]]), _cvtsh_ss(ws[gw[2]]), _cvtsh_ss(ws[gw[1]]), _cvtsh_ss(ws[gw[0]]));
            off = zo ? _mm256_set_epi32(zo[gw[7]], zo[gw[6]], zo[gw[5]], zo[gw[4]], zo[gw[3]], zo[gw[2]], zo[gw[1]],
                                        zo[gw[0]])
                     : _mm256_set1_epi32(J->off);
        }
        for (int r = 0; r < R; r++) {
            const int64_t xo = (r0 + r) * J->nb8 + b0;
            __m256i dots = _mm256_add_epi32(_mm256_permute2x128_si256(h0[r], h1[r], 0x20),
                                            _mm256_permute2x128_si256(h0[r], h1[r], 0x31));
            __m256i d = _mm256_sub_epi32(_mm256_mullo_epi32(multv, dots),
                                         _mm256_mullo_epi32(off, _mm256_loadu_si256((const __m256i *)(J->xsum + xo))));
            __m256 scale = _mm256_mul_ps(wsc, _mm256_loadu_ps(J->xs + xo));
            lanes[r] = _mm256_add_ps(lanes[r], _mm256_mul_ps(_mm256_cvtepi32_ps(d), scale));
        }
    }
    for (int r = 0; r < R; r++) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(lanes[r]), _mm256_extractf128_ps(lanes[r], 1));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0x4E));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0xB1));
        J->y[(r0 + r) * J->n + n] = _mm_cvtss_f32(h);
    }
}

/* weight rows r0..r1 against every activation row, BL_R rows per tile (a weight row is read from memory once
 * per call, then from L1), the last rows one at a time */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(rows_kernel)(const Job *J, int64_t r0, int64_t r1,
                                                                        const int bits, const int cpb) {
    for (int64_t n = r0; n < r1; n++) {
        int64_t r = 0;
        for (; r + BL_R <= J->m; r += BL_R) BL_FN(tile)(J, n, r, bits, cpb, BL_R);
        for (; r < J->m; r++) BL_FN(tile)(J, n, r, bits, cpb, 1);
    }
}

#define BL_CASE(B, C) if (J->bits == B && cpb == C) { BL_FN(rows_kernel)(J, r0, r1, B, C); return; }
BL_ATTR static void BL_FN(rows)(const Job *J, int64_t r0, int64_t r1) {
    const int64_t cpb = J->xb / 32; /* 1, 2 or 4: the block is gcd(group, 128) */
    BL_CASE(8, 1) BL_CASE(8, 2) BL_CASE(8, 4)
    BL_CASE(4, 1) BL_CASE(4, 2) BL_CASE(4, 4)
    BL_CASE(2, 1) BL_CASE(2, 2) BL_CASE(2, 4)
    BL_CASE(1, 1) BL_CASE(1, 2) BL_CASE(1, 4)
}
#undef BL_CASE
