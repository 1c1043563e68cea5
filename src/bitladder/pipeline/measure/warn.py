"""One warnings engine for every command's results (ladder, compress, mixed, tune): each check reads the
facts of one result row and says, in one short sentence, where the result is worse than it looks.

Checks register with :func:`check`; a fact a command did not measure is None (or empty) and the checks
that need it stay silent. The sentences go into the row's ``warnings`` list, which the terminal table,
the JSON and the HTML report all show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bitladder.kernels import registry

SLOW_MARGIN = 0.95  # latency ratios within 5 % of fp32 are timing noise on a shared 2-core machine
CLIP_WARN_FRACTION = 1e-3
MIN_SAMPLES = 100  # below this a fidelity difference of a few tenths of a point is noise
SHOWN = 6  # layers named in one sentence


@dataclass
class Facts:
    """What the checks may read about one result (a ladder rung, a recipe, a mixed assignment, a trial)."""

    latency_ratio: float | None = None  # fp32 latency / this model's
    bytes_on_disk: int | None = None
    fp32_bytes: int | None = None  # the float model's weights, where the command compares against them
    above: tuple[str, int] | None = None  # (name, bytes on disk) of the rung before this one
    kernels: dict[str, str] = field(default_factory=dict)  # layer -> compute path
    layers: dict[str, dict] = field(default_factory=dict)  # layer -> stats (latency_ratio, clipped, numel, format)
    kept: dict[str, str] = field(default_factory=dict)  # layer kept in float -> reason
    samples: int | None = None  # inputs the fidelity was measured on


CHECKS: list[Callable[[Facts], list[str]]] = []


def check(fn: Callable[[Facts], list[str]]) -> Callable[[Facts], list[str]]:
    """Register a check (a function of :class:`Facts` returning sentences)."""
    CHECKS.append(fn)
    return fn


def warnings_for(facts: Facts) -> list[str]:
    """Every registered check's sentences, in registration order."""
    return [w for fn in CHECKS for w in fn(facts)]


def _names(names: list[str], describe: Callable[[str], str] = str) -> str:
    shown = ", ".join(describe(n) for n in names[:SHOWN])
    return shown + (", ..." if len(names) > SHOWN else "")


@check
def slower_than_fp32(f: Facts) -> list[str]:
    """The model, or some of its layers, ran slower than fp32 (beyond the timing noise margin)."""
    out = []
    if f.latency_ratio is not None and f.latency_ratio < SLOW_MARGIN:
        paths = sorted(set(f.kernels.values()))
        out.append(f"slower than fp32 (latency ratio {f.latency_ratio:.2f})"
                   + (f"; compute paths: {', '.join(paths)}" if paths else ""))
    slow = [n for n, s in f.layers.items() if s.get("latency_ratio", 1.0) < SLOW_MARGIN]
    if slow:
        out.append(f"{len(slow)} of {len(f.layers)} layers slower than fp32: "
                   + _names(slow, lambda n: _slow(f.layers[n], n)))
    return out


def _slow(layer: dict, name: str) -> str:
    """A slow layer as the warning names it: kernel, ratio, and the microseconds a call it loses where timed."""
    lost = (f", +{layer['latency_us'] - layer['fp32_latency_us']:.0f} us a call"
            if "latency_us" in layer and "fp32_latency_us" in layer else "")
    return f"{name} ({layer.get('kernel')}, {layer['latency_ratio']:.2f}x{lost})"


@check
def kernel_advice(f: Facts) -> list[str]:
    """Where the model or a layer ran slower than fp32 on a kernel that declares why it can be
    (``LinearKernel.advice``, e.g. a path that ties fp32 at best on this CPU): that sentence, once per kernel."""
    used = set(f.kernels.values()) if f.latency_ratio is not None and f.latency_ratio < SLOW_MARGIN else set()
    used |= {s.get("kernel") for s in f.layers.values() if s.get("latency_ratio", 1.0) < SLOW_MARGIN}
    advice = {n: getattr(registry.KERNELS.get(n), "advice", None) for n in used if n}
    return [f"{n}: {a}" for n, a in sorted(advice.items()) if a]


@check
def no_smaller(f: Facts) -> list[str]:
    """The artifact is no smaller than the float model, or than the rung before it."""
    out = []
    if f.bytes_on_disk is not None and f.fp32_bytes and f.bytes_on_disk >= f.fp32_bytes:
        out.append(f"no size gain: {f.bytes_on_disk:,} bytes against fp32's {f.fp32_bytes:,}")
    if f.bytes_on_disk is not None and f.above and f.bytes_on_disk >= f.above[1]:
        out.append(f"no smaller than the rung above ({f.above[0]}: {f.above[1]:,} bytes, this one "
                   f"{f.bytes_on_disk:,})")
    return out


def on_fallback(kernel: str) -> bool:
    """Whether a layer ran the last resort, ``dequant-fp32`` (its whole weight dequantised through torch every
    call, then the float op), possibly under an activation format's suffix. Kernels that auto chose for being the
    fastest here (``numba-dequant-*`` at hundreds of rows, ``c-dequant-conv``, ``gather-dequant-fp32`` for
    embedding rows) also compute in float, but by choice, not for want of a kernel."""
    return kernel.startswith("dequant-fp32")


@check
def fallback_kernels(f: Facts) -> list[str]:
    """Layers that dequantise their whole weight on every call for want of any other kernel."""
    deq = sorted(n for n, k in f.kernels.items() if on_fallback(k))
    if not deq:
        return []
    return [f"{len(deq)} of {len(f.kernels)} quantised layers on a fallback kernel (dequantised every call): "
            + _names(deq)]


@check
def kept_in_float(f: Facts) -> list[str]:
    """Layers the configuration left in float, counted by reason."""
    if not f.kept:
        return []
    kinds = Counter(f.kept.values())
    return ["kept in float: " + "; ".join(f"{n} x {r}" for r, n in sorted(kinds.items()))]


@check
def clipped(f: Facts) -> list[str]:
    """Layers where more than ``CLIP_WARN_FRACTION`` of the weights were clipped to the format's range."""
    out = []
    for name, s in f.layers.items():
        frac = s.get("clipped", 0) / max(s.get("numel", 0), 1)
        if s.get("format") not in ("ternary", "binary") and frac > CLIP_WARN_FRACTION:
            out.append(f"{name}: {s['clipped']} values ({100 * frac:.2f} %) clipped to the format's range")
    return out


@check
def few_samples(f: Facts) -> list[str]:
    """Fidelity measured on fewer than ``MIN_SAMPLES`` inputs."""
    if f.samples is None or f.samples >= MIN_SAMPLES:
        return []
    return [f"fidelity measured on {f.samples} inputs (fewer than {MIN_SAMPLES}): differences of a few tenths of "
            "a point are noise"]


def sample_count(batches: list[Any]) -> int:
    """Inputs in a list of batches (tensors, or dicts of tensors sharing their first dimension)."""
    total = 0
    for b in batches:
        t = next(iter(b.values())) if isinstance(b, dict) else b
        total += int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() else 1
    return total


def float_bytes(model: torch.nn.Module) -> int:
    """Bytes of a float model's parameters and buffers (what an artifact of it at least holds)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
