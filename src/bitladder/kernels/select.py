"""Pick the kernel for a quantised Linear weight: rules over the registered kernels and the CPU.

Every kernel declares its needs (:class:`bitladder.kernels.base.LinearKernel`); automatic selection
takes, in ``rank`` order, the first kernel that is installed, whose CPU features are present (as
``BITLADDER_CPU`` presents them), that takes this weight, and whose ``auto_rows`` hold the call's row
count. ``dequant-fp32`` applies to everything and comes last. Measured figures behind the ranks and row
ranges live in ``docs/results/`` (bench-linear*.json) and ``docs/DESIGN.md``, not here.

A policy other than "auto" names a kernel; three names are families rather than kernels: "int8-w8a8" and
"int8-w8a8-token" (what ``Act(dynamic=...)`` sets) and "int8-w8a8-static" (static activation scales) take
oneDNN's integer GEMM from :func:`onednn_min_rows` rows on and fbgemm's below (oneDNN measured faster from ~256
rows on AMD EPYCs, from 16-32 on an Intel Xeon, with or without VNNI); at one row "int8-w8a8-token" takes the C
GEMV where auto would (a per-block activation grid, finer than per token); a static 8-bit grid against 8-bit
weights that neither GEMM takes whole (no VNNI) takes the C kernel of 16-bit pair products (``STATIC_C``).
"""

from __future__ import annotations

from bitladder.kernels import registry
from bitladder.kernels.cpu import Cpu, current

ONEDNN_MIN_ROWS = 256
#: where oneDNN's integer GEMM overtakes fbgemm's on a vendor's CPUs (else ONEDNN_MIN_ROWS): on an Intel Xeon
#: (AMX) at 16-32 rows on MiniLM's and 4096² shapes, natively and capped to AVX-512 without VNNI (notes.md,
#: 'An Intel Xeon')
ONEDNN_MIN_ROWS_BY_VENDOR = {"GenuineIntel": 32}
FAMILIES = ("auto", "int8-w8a8", "int8-w8a8-token", "int8-w8a8-static")


#: at one row the per-token family runs a C kernel where auto would (the batch GEMM for 1- to 4-bit codes, the
#: GEMV for 8-bit ones): int8 activations per block of up to 128 inputs, a finer grid than one scale for the row,
#: and 2-3x fbgemm's speed at 1024² (docs/results/bench-linear-avx2*.json)
ONE_ROW = ("c-lowbit-tiles", "c-lowbit-a8")
#: the static family's kernel where neither integer GEMM takes an 8-bit grid against 8-bit weights whole (no
#: VNNI): exact 16-bit pair products in one GEMM instead of oneDNN's two (kernels/c_static.py)
STATIC_C = "int8-w8a8-c-static"


def onednn_min_rows(cpu: Cpu | None = None) -> int:
    """The row count from which the W8A8 families take oneDNN's GEMM on this CPU."""
    return ONEDNN_MIN_ROWS_BY_VENDOR.get((cpu or current()).vendor, ONEDNN_MIN_ROWS)


def policies() -> tuple[str, ...]:
    """The kernel policies a config may name (``Int(..., kernel=...)``): the families, then every kernel."""
    return FAMILIES + tuple(k.name for k in registry.for_op("linear"))


def candidates(qt, m: int, cpu: Cpu | None = None) -> list[str]:
    """Every kernel auto may use for this weight at ``m`` rows, best first (``dequant-fp32`` last)."""
    cpu = cpu or current()
    floats = not qt.qtype.rules.integer_codes  # only kernels that declare float formats see those
    return [k.name for k in registry.for_op("linear")
            if (k.float_codes or not floats) and (r := k.rows(cpu, qt)) is not None and r[0] <= max(m, 1) <= r[1]
            and k.available(cpu) and k.applies(qt)]


def choose(qt, m: int, policy: str = "auto", binary_activations: bool = False, cpu: Cpu | None = None) -> str:
    """The kernel for this weight at ``m`` rows under ``policy`` (auto: the first candidate).

    ``binary_activations`` opts binary weights into XNOR-popcount, which also binarises ``x``
    (XNOR-Net); without it every kernel keeps the weight-only meaning up to activation rounding.
    """
    cpu = cpu or current()
    if policy == "int8-w8a8-token" and m == 1:
        one = [k for k in candidates(qt, 1, cpu) if k in ONE_ROW]
        if one:
            return one[0]
    if policy in ("int8-w8a8", "int8-w8a8-token", "int8-w8a8-static"):
        onednn = registry.get("int8-w8a8-onednn")
        whole = policy != "int8-w8a8-static" or static_whole_on_fbgemm(qt, cpu)
        if not (whole or cpu.dot32("onednn")):  # oneDNN would run the grid split in two GEMMs: one exact in C
            c16 = registry.get(STATIC_C)
            if c16.available(cpu) and c16.applies(qt):
                return STATIC_C
        # a static grid fbgemm cannot take whole (its pair sums saturate): oneDNN at every size (whole with its
        # VNNI, else split); so too where torch has no fbgemm (a CPU without AVX2)
        rows = m >= onednn_min_rows(cpu) or not whole or not registry.get("int8-w8a8-fbgemm").available(cpu)
        backend = "onednn" if rows and onednn.available(cpu) else "fbgemm"
        return policy.replace("w8a8", f"w8a8-{backend}")
    if policy != "auto":
        return policy
    if binary_activations:
        xnor = registry.get("binary-xnor")
        if xnor.available(cpu) and xnor.applies(qt):
            return xnor.name
    return candidates(qt, m, cpu)[0]


def choose_conv(qt, policy: str, act: dict | None, cpu: Cpu | None = None) -> str | None:
    """The registered convolution kernel for this weight under ``policy`` (the first, in rank order, that takes the
    policy and the layer's activation format ``act``, is available and takes the weight), or None for the layer's
    own path: dequantise, float convolution (with its activation format simulated)."""
    cpu = cpu or current()
    for k in registry.for_op("conv2d"):
        if k.takes(policy, act) and k.available(cpu) and k.applies(qt):
            return k.name
    return None


def static_whole_on_fbgemm(qt, cpu: Cpu) -> bool:
    """Whether fbgemm's static GEMM takes a 256-code activation grid against this weight's codes: with AVX-512
    VNNI, or weights of at most 7 bits (2 * 255 * 64 fits a 16-bit pair sum)."""
    return cpu.dot32("fbgemm") or max(abs(qt.qtype.qmin), qt.qtype.qmax) <= 64


def build_kernel(qt, m: int = 1, binary_activations: bool = False):
    """Build the kernel :func:`choose` picks for this weight and batch size."""
    return registry.get(choose(qt, m, binary_activations=binary_activations)).from_qtensor(qt)
