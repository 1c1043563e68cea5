"""``bitladder mixed``: per-layer sensitivity, a mixed-precision assignment under a budget, its
artifact and fidelity, and a layer x rung heatmap."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from bitladder.atomic import atomic_path
from bitladder.io.artifact import load, save
from bitladder.methods.quantize.mixed import allocate, apply_assignment, sensitivity
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.report.figures import heatmap
from bitladder.pipeline.ladder.run import check_out_dir, write_json
from bitladder.pipeline.measure.machine import machine
from bitladder.pipeline.ladder.rungs import parse_rungs
from bitladder.zoo.spec import ModelSpec
from bitladder.io.filenames import safe_stem
from bitladder.pipeline.measure.warn import Facts, float_bytes, sample_count, warnings_for


def run_mixed(spec: ModelSpec, rungs, budget: float, out: Path) -> dict:
    """Assign ``rungs`` (names, or names parsed to configs) per layer under ``budget`` bits per weight; save,
    measure and report into ``out``."""
    cands = parse_rungs(rungs)
    rungs = list(cands)
    check_out_dir(out)
    mach = machine()
    table = sensitivity(spec.model, cands, spec.calib_batches[:1])
    assign = allocate(table, budget)
    q = apply_assignment(spec.model, assign, cands, spec.calib_batches)
    path = save(q, out / f"{safe_stem(spec.name)}-mixed-b{budget:g}.safetensors", source=spec.source,
                config={"type": "Mixed", "assignment": assign, "candidates": {r: c.to_dict() for r, c in cands.items()}})
    back = load(path, model=spec.fresh_model())
    ref = outputs(spec.model, spec.eval_batches)
    fid = fidelity(spec, outputs(back, spec.eval_batches), ref)
    base = fidelity(spec, ref, ref)["fidelity"]
    numel = {n: table[n][rungs[0]]["numel"] for n in table}
    avg = sum(table[n][r]["bits_per_weight"] * numel[n] for n, r in assign.items()) / sum(numel.values())
    result = {"schema": "bitladder.mixed/1", "model": spec.name, "budget_bits": budget, "bits_per_weight": avg,
              "fidelity": fid["fidelity"], "fidelity_drop_pt": 100 * (base - fid["fidelity"]),
              "cos_min": fid["cos_min"], "knn10": fid["knn10"], "bytes_on_disk": path.stat().st_size,
              "assignment": assign, "sensitivity": table, "machine": mach}
    result["warnings"] = warnings_for(Facts(
        bytes_on_disk=result["bytes_on_disk"], fp32_bytes=float_bytes(spec.model),
        kernels={n: m.kernel for n, m in back.named_modules() if hasattr(m, "kernel")},
        samples=sample_count(spec.eval_batches)))
    write_json(out / "mixed.json", result)
    png = base64.b64decode(heatmap(table))
    with atomic_path(out / "sensitivity.png") as tmp:
        tmp.write_bytes(png)
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(r)}</td></tr>" for n, r in assign.items())
    warn_items = "".join(f"<li>{html.escape(w)}</li>" for w in result["warnings"]) or "<li>none</li>"
    page = (f"<!doctype html><meta charset='utf-8'><title>bitladder mixed: {spec.name}</title>"
            f"<h1>{spec.name}: mixed precision at {budget:g} bits per weight</h1>"
            f"<p>fidelity {fid['fidelity']:.4f} ({spec.metric}); {avg:.3f} bits per weight</p>"
            f"<h2>Warnings</h2><ul>{warn_items}</ul>"
            f"<img alt='sensitivity heatmap' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<table><tr><th>layer</th><th>rung</th></tr>{rows}</table>")
    with atomic_path(out / "mixed.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return result
