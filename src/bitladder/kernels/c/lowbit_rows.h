/* The SIMD rows of lowbit.c, included once per instruction set: BL_ATTR (the target attribute), BL_FN(name)
 * (the name with its suffix) and BL_VNNI (1: vpdpbusd sums four u8 x s8 products into 32 bits, one instruction
 * where AVX2 needs vpmaddubsw, an add and a widening) are defined by the includer. The integer dots are exact
 * either way, so both give the same bits. */
/* the i32x8 partial dot of activation block i of a group of eight (chunk j = i * cpb + t of the group). The
 * chunks' 16-bit pair sums are added in 16 bits first (at most 4 * 2 * 15 * 127 = 15240: no overflow), then
 * widened once per block. 8-bit codes are signed: |w| times x with w's sign (2 * 128 * 127 = 32512 fits a
 * 16-bit pair sum, without VNNI), widened per chunk. */
BL_ATTR static inline __attribute__((always_inline)) __m256i BL_FN(block_dot)(const uint8_t *src, const int8_t *xv, const int i,
                                                                   const int bits, const int cpb) {
    const int per = 8 / bits;
    const __m256i maskv = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    if (bits == 8) {
        __m256i acc32 = _mm256_setzero_si256();
        for (int t = 0; t < cpb; t++) {
            const int j = i * cpb + t;
            __m256i v = _mm256_loadu_si256((const __m256i *)(src + j * 32));
            __m256i x = _mm256_loadu_si256((const __m256i *)(xv + j * 32));
#if BL_VNNI
            acc32 = _mm256_dpbusd_epi32(acc32, _mm256_abs_epi8(v), _mm256_sign_epi8(x, v));
#else
            __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(x, v));
            acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(p, ones));
#endif
        }
        return acc32;
    }
    for (int t = 0; t < cpb; t++) {
        const int j = i * cpb + t;
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + (j / per) * 32));
        __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, bits * (j % per)), maskv);
        __m256i x = _mm256_loadu_si256((const __m256i *)(xv + j * 32));
#if BL_VNNI
        acc = _mm256_dpbusd_epi32(acc, u, x); /* four products summed straight into 32 bits */
#else
        acc = _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, x));
#endif
    }
#if BL_VNNI
    (void)ones;
    return acc;
#else
    return _mm256_madd_epi16(acc, ones);
#endif
}

/* rows r0..r1 for codes of `bits` and `cpb` 32-code chunks per activation block, both constants once inlined:
 * a group of eight blocks starts on a superblock, so every shift and load offset is fixed. The eight block
 * dots are reduced pairwise (hadd) into one i32x8 in block order, so nothing is spilled to memory. */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(rows_kernel)(const Job *J, int64_t r0, int64_t r1,
                                                                        const int bits, const int cpb) {
    const int per = 8 / bits;
    const int64_t nbx = J->kp / J->xb;
    const int direct = J->xb == J->g; /* block b uses weight group b: its scales load as one vector */
    const __m256i multv = _mm256_set1_epi32(J->mult);
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *row = J->w + n * J->row_bytes;
        const uint16_t *ws = J->ws + n * J->nbw;
        const uint8_t *zo = J->zo ? J->zo + n * J->nbw : NULL;
        __m256 lanes = _mm256_setzero_ps();
        for (int64_t b0 = 0; b0 < nbx; b0 += 8) {
            const uint8_t *src = row + (b0 * cpb / per) * 32;
            /* ask for the weights BL_PF bytes ahead: the hardware prefetcher alone leaves the loads waiting */
            for (int c = 0; c < 8 * cpb * 32 / per; c += 64) _mm_prefetch((const char *)(src + BL_PF + c), _MM_HINT_T0);
            const int8_t *xv = J->xq + b0 * cpb * 32;
            const int64_t left = nbx - b0;
#define BD(i) ((i) < left ? BL_FN(block_dot)(src, xv, i, bits, cpb) : _mm256_setzero_si256())
            __m256i h01 = _mm256_hadd_epi32(BD(0), BD(1)), h23 = _mm256_hadd_epi32(BD(2), BD(3));
            __m256i h0 = _mm256_hadd_epi32(h01, h23);
            __m256i h45 = _mm256_hadd_epi32(BD(4), BD(5)), h67 = _mm256_hadd_epi32(BD(6), BD(7));
            __m256i h1 = _mm256_hadd_epi32(h45, h67);
#undef BD
            __m256i dots = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                            _mm256_permute2x128_si256(h0, h1, 0x31));
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
            __m256i d = _mm256_sub_epi32(_mm256_mullo_epi32(multv, dots),
                                         _mm256_mullo_epi32(off, _mm256_loadu_si256((const __m256i *)(J->xsum + b0))));
            __m256 scale = _mm256_mul_ps(wsc, _mm256_loadu_ps(J->xs + b0));
            lanes = _mm256_add_ps(lanes, _mm256_mul_ps(_mm256_cvtepi32_ps(d), scale));
        }
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0x4E));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0xB1));
        J->y[n] = _mm_cvtss_f32(h);
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
