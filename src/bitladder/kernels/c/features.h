/* The CPU's features as its instructions report them (cpuid), and only those the OS saves state for (xgetbv):
 * what oneDNN, fbgemm and onnxruntime see. /proc/cpuinfo can claim more (an emulator passes the host's through). */
#ifndef BL_FEATURES_H
#define BL_FEATURES_H
#include <stdint.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define BL_CPUID 1

static uint64_t xcr0(void) { /* the state components the OS saves: 0 without OSXSAVE */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* one bit per name, in the order of cpu.FEATURES: avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx
 * vpopcntdq (avx2 counted with the FMA and F16C every AVX2 path here uses) */
static unsigned cpu_feature_bits(void) {
    unsigned a, b, c, d, a1 = 0, b1, c1, d1, fma_f16c;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    fma_f16c = (c & (1u << 12)) && (c & (1u << 29));
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (a >= 1) __cpuid_count(7, 1, a1, b1, c1, d1);
    const uint64_t x = xcr0();
    const int ymm = (x & 0x6) == 0x6, zmm = ymm && (x & 0xE0) == 0xE0, tiles = (x & 0x60000) == 0x60000;
    const int avx2 = ymm && fma_f16c && (b & (1u << 5)), f = zmm && (b & (1u << 16)), bw = f && (b & (1u << 30));
    return (unsigned)avx2 | (unsigned)f << 1 | (unsigned)bw << 2 | (unsigned)(f && (c & (1u << 11))) << 3 |
           (unsigned)(avx2 && (a1 & (1u << 4))) << 4 | (unsigned)(f && (a1 & (1u << 5))) << 5 |
           (unsigned)(tiles && (d & (1u << 24)) && (d & (1u << 25))) << 6 | (unsigned)(f && (c & (1u << 14))) << 7;
}
#endif
#endif
