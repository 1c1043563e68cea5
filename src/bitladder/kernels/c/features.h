/* The CPU's features as its instructions report them (cpuid), and only those the OS saves state for (xgetbv):
 * what oneDNN, fbgemm and onnxruntime see. /proc/cpuinfo can claim more (an emulator passes the host's through). */
#ifndef BL_FEATURES_H
#define BL_FEATURES_H
#include <stdint.h>
#include <string.h>
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

/* The CPU's name, vendor and (family, model, stepping) as cpuid gives them, decoded as Linux does for
 * /proc/cpuinfo: an emulator's CPU names itself here, where /proc/cpuinfo names the host. 0 without the leaves. */
static int cpu_identity(char brand[49], char vendor[13], unsigned fms[3]) {
    unsigned a, b, c, d, regs[12];
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    memcpy(vendor, &b, 4), memcpy(vendor + 4, &d, 4), memcpy(vendor + 8, &c, 4), vendor[12] = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned base = (a >> 8) & 0xF, family = base == 0xF ? base + ((a >> 20) & 0xFF) : base;
    fms[0] = family, fms[1] = ((a >> 4) & 0xF) | (family >= 6 ? ((a >> 16) & 0xF) << 4 : 0), fms[2] = a & 0xF;
    brand[0] = 0;
    if (__get_cpuid_max(0x80000000u, 0) < 0x80000004u) return 1;
    for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2],
                                                 &regs[4 * i + 3]);
    memcpy(brand, regs, 48), brand[48] = 0;
    return 1;
}
#endif
#endif
