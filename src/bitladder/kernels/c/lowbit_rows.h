/* The SIMD rows of lowbit.c, included once per instruction set: BL_ATTR (the target attribute), BL_FN(name)
 * (the name with its suffix) and BL_VNNI (1: vpdpbusd sums four u8 x s8 products into 32 bits, one instruction
 * where AVX2 needs vpmaddubsw, an add and a widening) and BL_R (activation rows per register tile) are defined by
 * the includer. The integer dots are exact
 * either way, so both give the same bits. */
/* the i32x8 partial dot of activation block i of a group of eight (chunk j = i * cpb + t of the group). The
 * chunks' 16-bit pair sums are added in 16 bits first (at most 4 * 2 * 15 * 127 = 15240: no overflow), then
 * widened once per block. 8-bit codes are signed: |w| times x with w's sign (2 * 128 * 127 = 32512 fits a
 * 16-bit pair sum, without VNNI), widened per chunk; with VNNI (BL_XOR8) w + 128 times x, summed in 32 bits,
 * and one_row takes 128 * sum(x) back out with the offset term. */
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
#if BL_VNNI && BL_XOR8 /* (w + 128) x x, one instruction fewer: the caller takes 128 * sum(x) back out */
            acc32 = _mm256_dpbusd_epi32(acc32, _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), x);
#elif BL_VNNI
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

/* the weight scales (fp16 -> fp32) and offsets of activation blocks b0..b0+7 of one weight row: one load each where
 * block b uses weight group b (direct; scales and offsets of rows are padded by eight, so this never reads past
 * the end), else gathered through J->gw */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(group_scales)(const Job *J, const uint16_t *ws,
                                                                          const uint8_t *zo, int64_t b0, int direct,
                                                                          __m256 *wsc, __m256i *off) {
    if (direct) {
        *wsc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + b0)));
        *off = zo ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(zo + b0))) : _mm256_set1_epi32(J->off);
        return;
    }
    const int32_t *gw = J->gw + b0;
    *wsc = _mm256_set_ps(_cvtsh_ss(ws[gw[7]]), _cvtsh_ss(ws[gw[6]]), _cvtsh_ss(ws[gw[5]]), _cvtsh_ss(ws[gw[4]]),
                         _cvtsh_ss(ws[gw[3]]), _cvtsh_ss(ws[gw[2]]), _cvtsh_ss(ws[gw[1]]), _cvtsh_ss(ws[gw[0]]));
    *off = zo ? _mm256_set_epi32(zo[gw[7]], zo[gw[6]], zo[gw[5]], zo[gw[4]], zo[gw[3]], zo[gw[2]], zo[gw[1]], zo[gw[0]])
              : _mm256_set1_epi32(J->off);
}

/* one activation row: weight rows r0..r1 for codes of `bits` and `cpb` 32-code chunks per activation block, both
 * constants once inlined (kept beside the tiles: the tile code at one row ran 7-19 % slower, docs/results/notes.md):
 * a group of eight blocks starts on a superblock, so every shift and load offset is fixed. The eight block
 * dots are reduced pairwise (hadd) into one i32x8 in block order, so nothing is spilled to memory. */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(one_row)(const Job *J, int64_t r0, int64_t r1,
                                                                        const int bits, const int cpb) {
    const int per = 8 / bits;
    const int64_t nbx = J->kp / J->xb;
    const int direct = J->xb == J->g; /* block b uses weight group b: its scales load as one vector */
    const __m256i multv = _mm256_set1_epi32(J->mult);
    /* the offset term's share of w + 128 (BL_XOR8's dots on VNNI), else nothing */
    const __m256i off8 = _mm256_set1_epi32(BL_VNNI && BL_XOR8 && bits == 8 ? 128 * J->mult : 0);
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *row = J->w + n * J->row_bytes;
        const uint16_t *ws = J->ws + n * J->nbw;
        const uint8_t *zo = J->zo ? J->zo + n * J->nbw : NULL;
        if (BL_ROWPF && n + BL_ROWPF_AHEAD < r1)
            for (int c = 0; c < BL_ROWPF * 64; c += 64)
                _mm_prefetch((const char *)(row + BL_ROWPF_AHEAD * J->row_bytes + c), _MM_HINT_T0);
        __m256 lanes = _mm256_setzero_ps();
        for (int64_t b0 = 0; b0 < nbx; b0 += 8) {
            const uint8_t *src = row + (b0 * cpb / per) * 32;
            /* ask for the weights BL_PF bytes ahead: the hardware prefetcher alone leaves the loads of packed codes
             * waiting (docs/DESIGN.md, 'A C GEMV for one row') */
            if (bits != 8)
                for (int c = 0; c < 8 * cpb * 32 / per; c += 64) _mm_prefetch((const char *)(src + BL_PF + c), _MM_HINT_T0);
            const int64_t left = nbx - b0;
            if (bits == 8 && J->pf8) /* the lines read, into L2 BL_PF ahead, then into L1 BL_PF8_L1 ahead */
                for (int c = 0; c < (left < 8 ? left : 8) * cpb * 32; c += 64)
                    prefetch_ahead(src + c, 1, BL_PF, BL_PF8_L1, 0);
            const int8_t *xv = J->xq + b0 * cpb * 32;
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
            BL_FN(group_scales)(J, ws, zo, b0, direct, &wsc, &off);
            if (BL_VNNI && BL_XOR8 && bits == 8) off = _mm256_add_epi32(off, off8); /* dots of w + 128 */
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

/* Up to four activation rows per register tile, as named fields (Rows4, Lanes4 in lowbit.c) that R, a constant
 * once inlined, leaves in use: indexed arrays stayed on the stack (GCC kept a store per block, 1.3-1.4x slower
 * at one row than the single-row code). RF(q, k) is field k. */
#define RF(q, k) (*((k) == 0 ? &(q).r0 : (k) == 1 ? &(q).r1 : (k) == 2 ? &(q).r2 : &(q).r3))
#define FOR_ROWS(R, STMT) do { if ((R) > 0) { const int k_ = 0; STMT; } if ((R) > 1) { const int k_ = 1; STMT; } \
                               if ((R) > 2) { const int k_ = 2; STMT; } if ((R) > 3) { const int k_ = 3; STMT; } } while (0)

/* the i32x8 partial dots of activation block i of a group of eight (chunk j = i * cpb + t of the group) for
 * R activation rows at once: each weight chunk is loaded and unpacked once for all R rows. Without VNNI the
 * chunks' 16-bit pair sums are added in 16 bits first (at most 4 * 2 * 15 * 127 = 15240: no overflow), then
 * widened once per block. 8-bit codes are signed: |w| times x with w's sign (2 * 128 * 127 = 32512 fits a
 * 16-bit pair sum, without VNNI), widened per chunk. Blocks past the row's end (i >= left) are zero. */
BL_ATTR static inline __attribute__((always_inline)) Rows4 BL_FN(block_dots)(const uint8_t *src, const int8_t *xv,
                                                                         const int64_t xstride, const int i,
                                                                         const int64_t left, const int bits,
                                                                         const int cpb, const int R) {
    const int per = 8 / bits;
    const __m256i maskv = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
    Rows4 out;
    FOR_ROWS(R, RF(out, k_) = _mm256_setzero_si256());
    if (i >= left) return out;
    for (int t = 0; t < cpb; t++) {
        const int j = i * cpb + t;
        if (bits == 8) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(src + j * 32)), a = _mm256_abs_epi8(v);
#if BL_VNNI
            FOR_ROWS(R, RF(out, k_) = _mm256_dpbusd_epi32(RF(out, k_), a, _mm256_sign_epi8(
                         _mm256_loadu_si256((const __m256i *)(xv + k_ * xstride + j * 32)), v)));
#else
            FOR_ROWS(R, RF(out, k_) = _mm256_add_epi32(RF(out, k_), _mm256_madd_epi16(_mm256_maddubs_epi16(a,
                         _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xv + k_ * xstride + j * 32)), v)), ones)));
#endif
            continue;
        }
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + (j / per) * 32));
        __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, bits * (j % per)), maskv);
#if BL_VNNI /* four products summed straight into 32 bits */
        FOR_ROWS(R, RF(out, k_) = _mm256_dpbusd_epi32(RF(out, k_), u,
                                                      _mm256_loadu_si256((const __m256i *)(xv + k_ * xstride + j * 32))));
#else
        FOR_ROWS(R, RF(out, k_) = _mm256_add_epi16(RF(out, k_), _mm256_maddubs_epi16(u,
                                                   _mm256_loadu_si256((const __m256i *)(xv + k_ * xstride + j * 32)))));
#endif
    }
#if !BL_VNNI
    if (bits != 8) FOR_ROWS(R, RF(out, k_) = _mm256_madd_epi16(RF(out, k_), ones));
#endif
    (void)ones;
    return out;
}

BL_ATTR static inline __attribute__((always_inline)) Rows4 BL_FN(hadd_rows)(Rows4 a, Rows4 b, const int R) {
    FOR_ROWS(R, RF(a, k_) = _mm256_hadd_epi32(RF(a, k_), RF(b, k_)));
    return a;
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
    Lanes4 lanes;
    FOR_ROWS(R, RF(lanes, k_) = _mm256_setzero_ps());
    for (int64_t b0 = 0; b0 < nbx; b0 += 8) {
        const uint8_t *src = row + (b0 * cpb / per) * 32;
        /* ask for the weights BL_PF bytes ahead: the hardware prefetcher alone leaves the loads waiting */
        if (r0 == 0)
            for (int c = 0; c < 8 * cpb * 32 / per; c += 64) _mm_prefetch((const char *)(src + BL_PF + c), _MM_HINT_T0);
        const int8_t *xv = J->xq + r0 * J->kp + b0 * cpb * 32;
        const int64_t left = nbx - b0;
#define BD(i) BL_FN(block_dots)(src, xv, J->kp, i, left, bits, cpb, R)
        Rows4 h0 = BL_FN(hadd_rows)(BL_FN(hadd_rows)(BD(0), BD(1), R), BL_FN(hadd_rows)(BD(2), BD(3), R), R);
        Rows4 h1 = BL_FN(hadd_rows)(BL_FN(hadd_rows)(BD(4), BD(5), R), BL_FN(hadd_rows)(BD(6), BD(7), R), R);
#undef BD
        __m256 wsc;
        __m256i off;
        BL_FN(group_scales)(J, ws, zo, b0, direct, &wsc, &off);
        FOR_ROWS(R, {
            const int64_t xo = (r0 + k_) * J->nb8 + b0;
            __m256i dots = _mm256_add_epi32(_mm256_permute2x128_si256(RF(h0, k_), RF(h1, k_), 0x20),
                                            _mm256_permute2x128_si256(RF(h0, k_), RF(h1, k_), 0x31));
            __m256i d = _mm256_sub_epi32(_mm256_mullo_epi32(multv, dots),
                                         _mm256_mullo_epi32(off, _mm256_loadu_si256((const __m256i *)(J->xsum + xo))));
            __m256 scale = _mm256_mul_ps(wsc, _mm256_loadu_ps(J->xs + xo));
            RF(lanes, k_) = _mm256_add_ps(RF(lanes, k_), _mm256_mul_ps(_mm256_cvtepi32_ps(d), scale));
        });
    }
    FOR_ROWS(R, {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(RF(lanes, k_)), _mm256_extractf128_ps(RF(lanes, k_), 1));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0x4E));
        h = _mm_add_ps(h, _mm_shuffle_ps(h, h, 0xB1));
        J->y[(r0 + k_) * J->n + n] = _mm_cvtss_f32(h);
    });
}

/* weight rows r0..r1 against every activation row, BL_R rows per tile (a weight row is read from memory once
 * per call, then from L1), then a tile of the rows left (sizes 1 to BL_R - 1) */
BL_ATTR static inline __attribute__((always_inline)) void BL_FN(rows_kernel)(const Job *J, int64_t r0, int64_t r1,
                                                                        const int bits, const int cpb) {
    if (J->m == 1) {
        BL_FN(one_row)(J, r0, r1, bits, cpb);
        return;
    }
    const int64_t full = J->m / BL_R * BL_R, rest = J->m - full;
    for (int64_t n = r0; n < r1; n++) {
        for (int64_t r = 0; r < full; r += BL_R) BL_FN(tile)(J, n, r, bits, cpb, BL_R);
        if (rest == 1) BL_FN(tile)(J, n, full, bits, cpb, 1);
#if BL_R > 2
        else if (rest == 2) BL_FN(tile)(J, n, full, bits, cpb, 2);
        else if (rest == 3) BL_FN(tile)(J, n, full, bits, cpb, 3);
#endif
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
