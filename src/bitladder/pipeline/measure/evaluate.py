"""Fidelity, size and speed of one model against its fp32 reference."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from bitladder.formats.quant import sqnr_db
from bitladder.nn.base import QuantModule
from bitladder.nn.select import run
from bitladder.pipeline.measure.metrics import METRICS, knn_agreement  # noqa: F401  (knn_agreement: re-exported)
from bitladder.zoo.spec import ModelSpec


@torch.inference_mode()
def outputs(model: nn.Module, batches: list[Any]) -> torch.Tensor:
    """The model's outputs over ``batches``, concatenated as float32 (inference mode)."""
    return torch.cat([run(model, b).float() for b in batches])


def fidelity(spec: ModelSpec, out: torch.Tensor, ref: torch.Tensor) -> dict:
    """The spec's metric (:data:`~bitladder.pipeline.measure.metrics.METRICS`) of ``out`` against the fp32
    outputs ``ref``: accuracy -> {fidelity}; cosine -> {fidelity: mean cosine, cos_min, knn10};
    perplexity -> {fidelity: next-token agreement, perplexity, fp32_perplexity}."""
    return METRICS[spec.metric](out, ref, spec.targets)


@torch.inference_mode()
def paired_latency(ref: nn.Module, model: nn.Module, batch: Any, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``ref`` and ``model`` on the same batch, runs interleaved to share noise, both in
    inference mode: with autograd on, the float model (whose parameters require grad) recorded a graph a
    quantised one (buffers) did not."""
    for _ in range(warmup):
        run(ref, batch), run(model, batch)
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(ref, batch)
        t1 = time.perf_counter()
        run(model, batch)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def float_counterpart(float_model: nn.Module, qmodel: nn.Module, name: str) -> tuple[nn.Module, torch.Tensor]:
    """The float layer a quantised layer of ``qmodel`` stands for, and the float weight it approximates
    (a structural wrapper that holds the quantised layer says which, through ``inner_reference``, e.g. a
    rotated layer approximates ``W H``)."""
    parent, _, child = name.rpartition(".")
    holder = qmodel.get_submodule(parent) if parent else qmodel
    if parent and hasattr(holder, "inner_reference"):
        return holder.inner_reference(float_model.get_submodule(parent))
    f = float_model.get_submodule(name)
    return f, f.weight.detach()


def layer_stats(float_model: nn.Module, qmodel: nn.Module) -> dict[str, dict]:
    """Per quantised layer: format, weight SQNR (dB), bytes, theoretical bytes, clipped count, kernel."""
    stats = {}
    for name, m in qmodel.named_modules():
        if not isinstance(m, QuantModule):
            continue
        qt = m.qweight
        w = float_counterpart(float_model, qmodel, name)[1]
        stats[name] = {"format": qt.qtype.name, "shape": list(qt.shape), "numel": qt.numel,
                       "sqnr_db": round(sqnr_db(w, m.effective_weight()), 3),
                       "bytes": qt.nbytes, "theoretical_bytes": qt.theoretical_nbytes,
                       "clipped": m.n_clipped, "kernel": m.kernel, "method": m.qmeta.get("method", "rtn")}
    return stats


def _calls_per_sample(fn, target_s: float, cap: int = 1000) -> int:
    """How many back-to-back calls of ``fn`` make one timing sample of about ``target_s``."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, min(cap, int(target_s / max(one, 1e-7))))


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


@torch.inference_mode()
def layer_latency(float_model: nn.Module, qmodel: nn.Module, batch: Any, repeats: int = 7,
                  sample_s: float = 2e-3) -> dict[str, dict[str, float]]:
    """Per quantised layer, on the input it receives from ``batch`` (captured once): ``latency_ratio`` (fp32 layer
    latency / quantised layer latency) and both latencies per call, ``latency_us`` and ``fp32_latency_us`` (a
    small layer's ratio is its fixed per-call cost: the microseconds say how much that is).

    A layer of the digits CNN runs in about the noise of one timed call (docs/DESIGN.md, 'Latency'), and
    a layer timed right after another finds the caches the other left. So each sample times enough
    back-to-back calls to last ``sample_s`` (the same count for both layers), the two layers alternate
    which goes first, and the ratio is of the medians over ``repeats`` samples."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args[0]))
             for n, m in qmodel.named_modules() if isinstance(m, QuantModule)]
    try:
        run(qmodel, batch)
    finally:
        for h in hooks:
            h.remove()
    timings = {}
    for name, x in seen.items():
        f, q = float_counterpart(float_model, qmodel, name)[0], qmodel.get_submodule(name)
        fa, fb = (lambda: f(x)), (lambda: q(x))
        fb()
        n = _calls_per_sample(fa, sample_s)
        tf, tq = [], []
        for i in range(repeats):
            for fn, out in ((fa, tf), (fb, tq)) if i % 2 == 0 else ((fb, tq), (fa, tf)):
                out.append(_per_call(fn, n))
        f_s, q_s = statistics.median(tf), max(statistics.median(tq), 1e-9)
        timings[name] = {"latency_ratio": f_s / q_s, "latency_us": round(q_s * 1e6, 2),
                         "fp32_latency_us": round(f_s * 1e6, 2)}
    return timings
