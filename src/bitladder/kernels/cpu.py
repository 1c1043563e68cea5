"""What the CPU in front of the user can do, and the ``BITLADDER_CPU`` override that makes it act lesser.

Kernel selection and activation grids read a :class:`Cpu` (never ``/proc/cpuinfo`` directly), so one
environment variable makes a VNNI host choose and round as an AVX2 or AVX-512-without-VNNI host would:

* ``native`` (or unset): the host's own features;
* ``default``: no vector extension at all (only portable paths);
* ``avx2``: AVX2 + FMA, no AVX-512 (Haswell .. Zen 3);
* ``avx2-vnni``: + AVX-VNNI, still no AVX-512 (Alder Lake .. Arrow Lake, Sierra Forest);
* ``avx512``: AVX-512 F/BW/VL without VNNI (Skylake-SP);
* ``avx512-vnni``: + VNNI (Cascade Lake, Ice Lake, Zen 4);
* ``avx512-bf16``: + AVX512-BF16 (Cooper Lake, Zen 4);
* ``amx``: + AMX tiles (Sapphire Rapids and later).

A level is a ceiling, not a claim: the features in force are the host's within the level, since an
instruction the host lacks cannot run whatever the variable says. The host's features are those cpuid reports
with the OS saving their registers (read by the C extension, as oneDNN, fbgemm and onnxruntime read them), within
``/proc/cpuinfo``'s: under an emulator (qemu's user mode) ``/proc/cpuinfo`` is the host's, and a grid chosen
from it would saturate the emulated CPU's GEMMs.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
from dataclasses import dataclass

from bitladder.errors import BitladderError

#: the features that change a kernel's choice or numerics (the names results files use)
FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx", "vpopcntdq")

_AVX512 = frozenset({"avx2", "avx512f", "avx512bw"})
LEVELS: dict[str, frozenset[str] | None] = {
    "native": None,
    "default": frozenset(),
    "avx2": frozenset({"avx2"}),
    "avx2-vnni": frozenset({"avx2", "avx_vnni"}),
    "avx512": _AVX512,
    "avx512-vnni": _AVX512 | {"avx512_vnni", "vpopcntdq"},
    "avx512-bf16": _AVX512 | {"avx512_vnni", "vpopcntdq", "avx512_bf16"},
    "amx": frozenset(FEATURES),
}

#: ``ONEDNN_MAX_CPU_ISA`` (oneDNN's own cap) -> the features it leaves: oneDNN runs no instruction above it, so
#: an activation grid that counts on VNNI would saturate on its GEMM; None: no cap (ALL, DEFAULT, AMX levels)
ONEDNN_CAPS: dict[str, frozenset[str] | None] = {
    "sse41": frozenset(), "avx": frozenset(), "avx2": frozenset({"avx2"}),
    "avx2_vnni": frozenset({"avx2", "avx_vnni"}), "avx2_vnni_2": frozenset({"avx2", "avx_vnni"}),
    "avx512_core": _AVX512, "avx512_core_vnni": LEVELS["avx512-vnni"],
    "avx512_core_bf16": LEVELS["avx512-bf16"], "avx512_core_fp16": LEVELS["avx512-bf16"],
}

#: ``FBGEMM_ENABLE_INSTRUCTIONS`` (fbgemm's own cap; its names) -> the features it leaves fbgemm
FBGEMM_CAPS: dict[str, frozenset[str]] = {
    "AVX2": frozenset({"avx2"}), "AVX512": _AVX512, "AVX512_256": _AVX512,
    "AVX512_E1": LEVELS["avx512-vnni"], "AVX512_E1_256": LEVELS["avx512-vnni"],
}

#: the instructions with which each integer-GEMM library adds every u8 x s8 product into 32 bits; without one
#: it sums pairs in 16 bits (vpmaddubsw), which saturates. fbgemm has no AVX-VNNI kernel: on a CPU with
#: AVX-VNNI but no AVX-512 it takes the 16-bit path, while oneDNN uses AVX-VNNI there
DOT32: dict[str, tuple[str, ...]] = {"fbgemm": ("avx512_vnni",), "onednn": ("avx512_vnni", "avx_vnni")}

# /proc/cpuinfo spells some features differently from the names above
_ALIASES = {"amx_int8": "amx", "amx_tile": "amx", "amx_bf16": "amx", "avx512_vpopcntdq": "vpopcntdq"}


@dataclass(frozen=True)
class Cpu:
    """The features in force (``flags``), the host's own (``host_flags``) and the level asked for."""

    model: str
    flags: frozenset[str]
    host_flags: frozenset[str]
    level: str = "native"
    vendor: str = ""  # /proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD): MKL tunes for Intel's only
    fbgemm_cap: frozenset[str] | None = None  # FBGEMM_ENABLE_INSTRUCTIONS's ceiling for fbgemm alone; None: none
    ident: tuple[int, int, int] | None = None  # /proc/cpuinfo's (family, model, stepping), where it gives them

    def has(self, *features: str) -> bool:
        """Whether every one of ``features`` is among the flags in force."""
        return all(f in self.flags for f in features)

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products into 32 bits (no 16-bit pairwise sum that can saturate)."""
        return self.has("avx512_vnni") or self.has("avx_vnni")

    def dot32(self, library: str) -> bool:
        """Whether ``library``'s (a key of :data:`DOT32`) u8 x s8 GEMM adds each product into 32 bits here, so
        a full 255-step activation grid cannot saturate it whatever the weights."""
        flags = self.flags if library != "fbgemm" or self.fbgemm_cap is None else self.flags & self.fbgemm_cap
        return any(f in flags for f in DOT32[library])

    @property
    def bf16_dot(self) -> bool:
        """Whether the CPU has bf16 dot products (AVX512-BF16 or AMX)."""
        return self.has("avx512_bf16") or self.has("amx")

    def describe(self) -> dict:
        """The ``machine``-object part a result file carries for the CPU."""
        d = {"cpu": self.model, "vendor": self.vendor, "flags": {f: f in self.flags for f in FEATURES}}
        if self.ident is not None:
            d["cpu_id"] = dict(zip(("family", "model", "stepping"), self.ident, strict=True))
        if self.level != "native":
            d["bitladder_cpu"] = self.level
        if self.level != "native" or self.flags != self.host_flags:  # capped (BITLADDER_CPU, ONEDNN_MAX_CPU_ISA)
            d["host_flags"] = {f: f in self.host_flags for f in FEATURES}
        if self.fbgemm_cap is not None:
            d["fbgemm_flags"] = {f: f in self.flags & self.fbgemm_cap for f in FEATURES}
        return d


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, str, frozenset[str], tuple[int, int, int] | None]:
    """(model name, vendor, features, (family, model, stepping) or None) of the first CPU in ``path``. The
    numbers name the generation where a hypervisor masks the model name ("AMD EPYC", "Intel(R) Xeon(R) Processor")."""
    model, vendor, raw, ids = platform.processor() or platform.machine(), "", set(), {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model in ("", platform.processor() or platform.machine()):
                    model = value
                elif key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "flags" and not raw:
                    raw = set(value.split())
                elif key in ("cpu family", "model", "stepping") and key not in ids and value.isdigit():
                    ids[key] = int(value)
    except OSError:  # not Linux: every feature test says no and only portable kernels are chosen
        pass
    flags = {_ALIASES.get(f, f) for f in raw}
    ident = tuple(ids[k] for k in ("cpu family", "model", "stepping")) if len(ids) == 3 else None
    return model, vendor, frozenset(f for f in FEATURES if f in flags), ident


def cpuid_flags() -> frozenset[str] | None:
    """The features (names of :data:`FEATURES`) cpuid reports and the OS saves state for, or None where the C
    extension is not built or the CPU is not x86-64."""
    try:  # by its full name: the compiled module
        bits = importlib.import_module("bitladder.kernels._lowbit").feature_bits()
    except (ImportError, AttributeError):  # no compiler at install time, or an extension built before this entry
        return None
    return None if bits is None else frozenset(f for i, f in enumerate(FEATURES) if bits >> i & 1)


def cpuid_identity() -> tuple[str, str, tuple[int, int, int]] | None:
    """(model name, vendor, (family, model, stepping)) as cpuid reports them, or None where the C extension is not
    built or the CPU is not x86-64. On hardware it is what Linux writes in ``/proc/cpuinfo``; under an emulator's
    user mode it is the emulated CPU, where ``/proc/cpuinfo`` is the host's."""
    try:
        got = importlib.import_module("bitladder.kernels._lowbit").identity()
    except (ImportError, AttributeError):
        return None
    return None if got is None else (got[0].strip(), got[1], tuple(got[2:]))


@functools.lru_cache(maxsize=1)
def _host() -> tuple[str, str, frozenset[str], tuple[int, int, int] | None]:
    """:func:`read_cpuinfo` of this machine within :func:`cpuid_flags`, read once: the hardware does not change
    under a process. Without ``/proc/cpuinfo``'s flags (not Linux) cpuid's alone; the CPU's name and numbers are
    cpuid's where it gives them (:func:`cpuid_identity`)."""
    model, vendor, flags, ident = read_cpuinfo()
    probed = cpuid_flags()
    if probed is not None:
        flags = flags & probed if flags else probed
    named = cpuid_identity()
    if named is not None:
        model, vendor, ident = named[0] or model, named[1] or vendor, named[2]
    return model, vendor, flags, ident


def parse_level(value: str | None) -> str:
    """The override's level name; a bad one is a one-line error naming the accepted values."""
    level = (value or "native").strip().lower()
    if level not in LEVELS:
        raise BitladderError(f"BITLADDER_CPU={value!r} is not a CPU level; accepted: {', '.join(LEVELS)}")
    return level


def current(env: dict | None = None) -> Cpu:
    """The CPU as kernels must see it: the host, capped at ``BITLADDER_CPU`` when that is set, and at
    ``ONEDNN_MAX_CPU_ISA`` when that is (an unknown value caps nothing, as in oneDNN); fbgemm's own cap
    ``FBGEMM_ENABLE_INSTRUCTIONS`` is kept apart, for the choices that depend on fbgemm alone."""
    env = os.environ if env is None else env
    model, vendor, host, ident = _host()
    level = parse_level(env.get("BITLADDER_CPU"))
    flags = host if LEVELS[level] is None else host & LEVELS[level]
    onednn = ONEDNN_CAPS.get((env.get("ONEDNN_MAX_CPU_ISA") or "").strip().lower())
    fbgemm = FBGEMM_CAPS.get((env.get("FBGEMM_ENABLE_INSTRUCTIONS") or "").strip().upper())
    return Cpu(model, flags if onednn is None else flags & onednn, host, level, vendor, fbgemm, ident)
