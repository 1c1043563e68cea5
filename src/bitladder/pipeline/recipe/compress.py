"""``bitladder compress``: run a recipe's steps on a model, then save, reload and evaluate the result.

Each step is timed and followed by a quick fidelity check, so the results show what every step cost.
The result is saved as one artifact (structure changes recorded, so it reloads from the model's
factory), reloaded, and measured like a ladder rung; ``results.json`` follows the ladder schema (one
row, the recipe) plus ``steps``, ``summary`` (per-layer before/after), ``robustness`` and
``sensitivity``, and ``report.html`` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from bitladder.io.artifact import load, save
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.allocator import allocated
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.ladder.run import SCHEMA, check_out_dir, write_json
from bitladder.pipeline.parallel import staged
from bitladder.pipeline.parallel.evaluate import Pipeline
from bitladder.pipeline.measure.machine import machine
from bitladder.pipeline.measure.macs import count_macs
from bitladder.pipeline.recipe.steps import Evaluate, Export, State, finalize
from bitladder.pipeline.measure.robustness import robustness
from bitladder.pipeline.ladder.summary import summarize
from bitladder.zoo.spec import ModelSpec
from bitladder.zoo.registry import build_for_load
from bitladder.io.filenames import safe_stem
from bitladder.pipeline.measure.warn import Facts, sample_count, warnings_for


def _params(model: torch.nn.Module) -> int:
    return sum(r["params_after"] for r in summarize(model, model))


@torch.no_grad()
def _nonzero(model: torch.nn.Module) -> int:
    """Nonzero weights of the weighted layers (what unstructured pruning lowers; params does not change)."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantModule):
            total += int(torch.count_nonzero(m.effective_weight()))
        elif isinstance(m, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Embedding):
            total += int(torch.count_nonzero(m.weight))
    return total


def _sensitivity(spec: ModelSpec, configs: dict) -> dict:
    from bitladder.methods.quantize.mixed import sensitivity

    data = spec.calib_batches[:1] or spec.eval_batches[:1]
    return sensitivity(spec.model, configs, data)


def run_recipe(recipe, spec: ModelSpec, out: Path,
               on_step: Callable[[str, dict | None], None] | None = None, allocator: dict | None = None) -> dict | None:
    """Run ``recipe`` (from :func:`bitladder.pipeline.recipe.parse.load_recipe`) on ``spec``; writes into ``out``.
    With ``recipe.pipeline`` (under torchrun), every rank runs the steps, rank 0 writes the artifact, all
    evaluate it in pipeline stages, and only rank 0 returns the results (others None). ``allocator``: what the
    command pinned, recorded beside the machine."""
    pipe = None if recipe.pipeline is None else Pipeline(recipe.pipeline.stages, recipe.pipeline.microbatches,
                                                         recipe.pipeline.timeout_s)
    reshaping = [s.kind for s in recipe.steps if s.body.stage == 1]  # prune, lowrank: stages load the float shapes
    rank = 0 if pipe is None else staged.start(pipe, spec.model, reshaping).rank
    if rank:  # the steps run here too (training is replicated); the files are rank 0's
        return _follow(recipe, spec, pipe, out)
    check_out_dir(out)
    mach = machine()
    t_all = time.perf_counter()
    ref = outputs(spec.model, spec.eval_batches)
    base = fidelity(spec, ref, ref)["fidelity"]
    st = State(spec=spec, model=spec.fresh_model(), out=out)
    st.model.load_state_dict(spec.model.state_dict())
    history = []
    export = next((s.body for s in recipe.steps if s.kind == "export"), None)
    ev = next((s.body for s in recipe.steps if s.kind == "evaluate"), None) or Evaluate()
    for step in recipe.steps:
        if not step.body.transforms:
            continue
        if on_step:
            on_step(step.kind, None)
        t0 = time.perf_counter()
        step.body.run(st)
        fid = fidelity(spec, outputs(st.model, spec.eval_batches), ref)
        rec = {"step": step.kind, "line": step.line, "seconds": time.perf_counter() - t0,
               "fidelity": fid["fidelity"], "params": _params(st.model), "nonzero": _nonzero(st.model)}
        history.append(rec)
        if on_step:
            on_step(step.kind, rec)
    model = finalize(st)
    name = recipe.name
    path = save(model, _artifact(out, recipe), source=spec.source,
                config={"type": "Recipe", "recipe": recipe.to_dict(), "steps": st.configs}, structure=st.structure)
    fp32_path = save(spec.model, out / "fp32.safetensors.tmp-size", source=spec.source)
    fp32_bytes = fp32_path.stat().st_size
    fp32_path.unlink()
    back = load(path, model=spec.fresh_model()) if spec.source is None else load(path, builder=build_for_load)
    local = outputs(back, spec.eval_batches)
    pipelined = None if pipe is None else staged.staged(path, spec, pipe, ref, local)  # others wait: first
    row = _measure(spec, back, ref, base, ev, local)
    if pipelined is not None:
        row["pipeline"] = pipelined
    row.update({"rung": name, "config": recipe.to_dict(), "artifact": path.name, "fp32_bytes": fp32_bytes,
                "bytes_on_disk": path.stat().st_size,
                "reload_identical": bool(torch.equal(outputs(model, spec.eval_batches), local))})
    row["warnings"] = st.notes + warnings_for(Facts(
        latency_ratio=row["latency_ratio"], bytes_on_disk=row["bytes_on_disk"], fp32_bytes=fp32_bytes,
        kernels=row["kernels"], samples=sample_count(spec.eval_batches)))
    results = {"schema": SCHEMA, "model": spec.name, "metric": spec.metric, "fp32_fidelity": base,
               "torch_threads": torch.get_num_threads(), "machine": mach, "allocator": allocated(allocator),
               "recipe": recipe.to_dict(), "rungs": [row],
               "steps": history, "summary": summarize(spec.model, back)}
    if ev.robustness:
        results["robustness"] = robustness(spec, back, ev.noise)
    if ev.sensitivity:
        results["sensitivity"] = _sensitivity(spec, ev.configs())
    if export is not None and export.onnx:
        results["onnx"] = _export_onnx(back, spec, out / f"{name}.onnx", export)
    results["wall_s"] = time.perf_counter() - t_all
    write_json(out / "results.json", results)
    return results


def _follow(recipe, spec: ModelSpec, pipe: Pipeline, out: Path) -> None:
    """A rank other than 0 of a pipelined recipe: the steps (a training step needs every rank), then its stage."""
    st = State(spec=spec, model=spec.fresh_model(), out=None)
    st.model.load_state_dict(spec.model.state_dict())
    for step in recipe.steps:
        if step.body.transforms:
            step.body.run(st)
    staged.staged(_artifact(out, recipe), spec, pipe, None, None)


def _artifact(out: Path, recipe) -> Path:
    return out / f"{safe_stem(recipe.name)}.safetensors"


def _measure(spec: ModelSpec, back: torch.nn.Module, ref: torch.Tensor, base: float, ev: Evaluate,
             got: torch.Tensor) -> dict:
    fid = fidelity(spec, got, ref)
    fp32_s, got_s = paired_latency(spec.model, back, spec.latency_batch, ev.repeats)
    qs = {n: m for n, m in back.named_modules() if isinstance(m, QuantModule)}
    qbytes = sum(m.qweight.nbytes for m in qs.values())
    numel = _params(back)
    return {"fidelity": fid["fidelity"], "fidelity_drop_pt": 100 * (base - fid["fidelity"]),
            **{k: v for k, v in fid.items() if k != "fidelity"},  # cos_min, knn10 and the metric's own keys
            "quantized_bytes": qbytes,
            "theoretical_bytes": sum(m.qweight.theoretical_nbytes for m in qs.values()),
            "bits_per_weight": 8 * qbytes / max(sum(m.qweight.numel for m in qs.values()), 1),
            "params": numel, "fp32_params": _params(spec.model),
            "macs": count_macs(back, spec.latency_batch), "fp32_macs": count_macs(spec.model, spec.latency_batch),
            "latency_ratio": fp32_s / got_s, "latency_ms": got_s * 1e3, "fp32_latency_ms": fp32_s * 1e3,
            "kernels": {n: m.kernel for n, m in qs.items()},
            "formats": {n: m.qweight.qtype.name for n, m in qs.items()}}


def _export_onnx(model, spec: ModelSpec, path: Path, export: Export) -> dict:
    from bitladder.io.onnx_export import export_onnx

    batch = spec.latency_batch
    example = {k: v[:2] for k, v in batch.items()} if isinstance(batch, dict) else batch[:2]
    p = export_onnx(model, example, path, export.opset, export.activations, export.weights)
    return {"file": p.name, "bytes": p.stat().st_size, "opset": export.opset}
