"""The ladder sweep: for each rung quantise, save, reload, evaluate, measure."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.artifact import load, read_header, save
from bitladder.methods.quantize.api import plan, quantize
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.evaluate import fidelity, layer_latency, layer_stats, outputs, paired_latency
from bitladder.pipeline.measure.machine import machine
from bitladder.methods.quantize.configs import QuantConfig
from bitladder.pipeline.ladder.rungs import parse_rungs
from bitladder.zoo.spec import ModelSpec
from bitladder.io.filenames import safe_stem

SCHEMA = "bitladder.ladder/1"
CLIP_WARN_FRACTION = 1e-3
SLOW_MARGIN = 0.95  # latency ratios within 5 % of fp32 are timing noise on a shared 2-core machine


def check_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BitladderError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return out


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _warnings(stats: dict, kept: dict, ratio: float) -> list[str]:
    out = []
    if ratio < SLOW_MARGIN:
        slow = sorted({s["kernel"] for s in stats.values()})
        out.append(f"slower than fp32 (latency ratio {ratio:.2f}); compute paths: {', '.join(slow)}")
    slow = [n for n, s in stats.items() if s.get("latency_ratio", 1.0) < SLOW_MARGIN]
    if slow:
        shown = ", ".join(f"{n} ({stats[n]['kernel']}, {stats[n]['latency_ratio']:.2f}x)" for n in slow[:6])
        out.append(f"{len(slow)} of {len(stats)} layers slower than fp32: {shown}{', ...' if len(slow) > 6 else ''}")
    for name, s in stats.items():
        frac = s["clipped"] / max(s["numel"], 1)
        if s["format"] not in ("ternary", "binary") and frac > CLIP_WARN_FRACTION:
            out.append(f"{name}: {s['clipped']} values ({100 * frac:.2f} %) clipped to the format's range")
    if kept:
        kinds = Counter(reason for reason in kept.values())
        out.append("kept in float: " + "; ".join(f"{n} x {r}" for r, n in sorted(kinds.items())))
    return out


def run_rung(spec: ModelSpec, rung: str, cfg: QuantConfig, out: Path, ref: torch.Tensor, base: float,
             repeats: int) -> dict:
    """Quantise to ``cfg`` (rung ``rung``), save and reload, and return its result row (fidelity, bytes,
    latency, kernels)."""
    p = plan(spec.model)
    t0 = time.perf_counter()
    needs = any(getattr(getattr(cfg, k, None), "needs_data", False) for k in ("method", "act"))
    if needs and not spec.calib_batches:
        raise BitladderError(f"rung {rung!r} needs calibration data and model {spec.name!r} has none")
    qmodel = quantize(spec.model, cfg, calib=spec.calib_batches if needs else None)
    quant_s = time.perf_counter() - t0
    path = save(qmodel, out / f"{safe_stem(spec.name)}-{rung}.safetensors", source=spec.source,
                config=cfg.to_dict())
    reloaded = load(path, model=spec.fresh_model())
    out_mem = outputs(qmodel, spec.eval_batches)
    out_disk = outputs(reloaded, spec.eval_batches)
    fid = fidelity(spec, out_disk, ref)
    fp32_s, rung_s = paired_latency(spec.model, reloaded, spec.latency_batch, repeats)
    stats = layer_stats(spec.model, reloaded)
    for name, r in layer_latency(spec.model, reloaded, spec.latency_batch).items():
        stats[name]["latency_ratio"] = r
    _, info = read_header(path)
    qbytes = sum(v["nbytes"] for k, v in info.items()
                 if k.rpartition(".")[0] in stats and k.rpartition(".")[2].startswith("weight_"))
    numel = sum(s["numel"] for s in stats.values())
    ratio = fp32_s / rung_s
    kept = {n: r for n, r in p.skipped.items()}
    kept.update({n: "configuration not handled" for n in p.targets
                 if not isinstance(reloaded.get_submodule(n), QuantModule)})
    return {
        "rung": rung, "config": cfg.to_dict(),
        "fidelity": fid["fidelity"], "fidelity_drop_pt": (base - fid["fidelity"]) * 100,
        "cos_min": fid["cos_min"], "knn10": fid["knn10"],
        "bytes_on_disk": path.stat().st_size,
        "quantized_bytes": qbytes, "theoretical_bytes": sum(s["theoretical_bytes"] for s in stats.values()),
        "bits_per_weight": 8 * qbytes / max(numel, 1),
        "latency_ratio": ratio, "latency_ms": rung_s * 1e3, "fp32_latency_ms": fp32_s * 1e3,
        "kernels": {n: s["kernel"] for n, s in stats.items()},
        "warnings": _warnings(stats, kept, ratio),
        "reload_identical": bool(torch.equal(out_mem, out_disk)),
        "quantize_s": quant_s, "artifact": path.name, "kept_float": kept, "layers": stats,
    }


def run_ladder(spec: ModelSpec, rungs: Iterable[str] | Mapping[str, QuantConfig], out: Path, repeats: int = 10,
               on_rung: Callable[[str, dict | None], None] | None = None) -> dict:
    """Sweep ``rungs`` (names, or names already parsed to configs) on ``spec``; writes artifacts and
    ``results.json`` into ``out``."""
    rungs = parse_rungs(rungs)  # every rung name is checked before any work starts
    check_out_dir(out)
    mach = machine()
    t0 = time.perf_counter()
    ref = outputs(spec.model, spec.eval_batches)
    base = fidelity(spec, ref, ref)["fidelity"]
    results = {"schema": SCHEMA, "model": spec.name, "metric": spec.metric, "fp32_fidelity": base,
               "torch_threads": torch.get_num_threads(), "machine": mach, "rungs": []}
    for rung, cfg in rungs.items():
        if on_rung:
            on_rung(rung, None)
        row = run_rung(spec, rung, cfg, out, ref, base, repeats)
        results["rungs"].append(row)
        if on_rung:
            on_rung(rung, row)
    results["wall_s"] = time.perf_counter() - t0
    write_json(out / "results.json", results)
    return results
