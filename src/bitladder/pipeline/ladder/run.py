"""The ladder sweep: for each rung quantise, save, reload, evaluate, measure."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.artifact import load, read_header, save
from bitladder.methods.quantize.api import plan, quantize
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.evaluate import fidelity, layer_latency, layer_stats, outputs, paired_latency
from bitladder.pipeline.measure.allocator import allocated
from bitladder.pipeline.measure.machine import machine
from bitladder.methods.quantize.configs import QuantConfig
from bitladder.pipeline.ladder.rungs import parse_rungs
from bitladder.pipeline.parallel import staged
from bitladder.pipeline.parallel.evaluate import Pipeline
from bitladder.zoo.registry import build_for_load
from bitladder.zoo.spec import ModelSpec
from bitladder.io.filenames import safe_stem
from bitladder.pipeline.measure.warn import Facts, sample_count, warnings_for

SCHEMA = "bitladder.ladder/1"


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


@contextlib.contextmanager
def out_dir(out: Path):
    """:func:`check_out_dir` for the work in the ``with`` block; a folder made here that is still empty when
    the block fails (a model that does not resolve) is removed again, so bad input leaves nothing behind."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # out and the parents it creates, deepest first
    check_out_dir(out)
    try:
        yield out
    except BaseException:
        for p in made:
            if not p.is_dir() or any(p.iterdir()):
                break
            p.rmdir()
        raise


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def rung_path(out: Path, spec: ModelSpec, rung: str) -> Path:
    """Where rung ``rung``'s artifact is written."""
    return out / f"{safe_stem(spec.name)}-{rung}.safetensors"


def run_rung(spec: ModelSpec, rung: str, cfg: QuantConfig, out: Path, ref: torch.Tensor, base: float,
             repeats: int, above: tuple[str, int] | None = None, unseen_ref: torch.Tensor | None = None,
             pipeline: Pipeline | None = None) -> dict:
    """Quantise to ``cfg`` (rung ``rung``), save and reload, and return its result row (fidelity, bytes,
    latency, kernels, warnings; ``above``: the previous rung's name and bytes on disk; ``unseen_ref``: fp32's
    outputs on ``spec.unseen_batches``, to score the reloaded model there too; ``pipeline``: the artifact is
    also evaluated in stages, row ``pipeline``)."""
    p = plan(spec.model)
    t0 = time.perf_counter()
    needs = cfg.needs_calibration
    if needs and not spec.calib_batches:
        raise BitladderError(f"rung {rung!r} needs calibration data and model {spec.name!r} has none")
    qmodel = quantize(spec.model, cfg, calib=spec.calib_batches if needs else None)
    quant_s = time.perf_counter() - t0
    path = save(qmodel, rung_path(out, spec, rung), source=spec.source, config=cfg.to_dict())
    # a recorded source rebuilds without reading float weights it would replace (a Hugging Face causal LM's
    # checkpoint); a factory's model is built by the factory
    reloaded = load(path, builder=build_for_load) if spec.source else load(path, model=spec.fresh_model())
    out_mem = outputs(qmodel, spec.eval_batches)
    out_disk = outputs(reloaded, spec.eval_batches)
    pipelined = None if pipeline is None else staged.staged(path, spec, pipeline, ref, out_disk)  # others wait
    fid = fidelity(spec, out_disk, ref)
    unseen = None if unseen_ref is None else fidelity(spec, outputs(reloaded, spec.unseen_batches), unseen_ref)
    fp32_s, rung_s = paired_latency(spec.model, reloaded, spec.latency_batch, repeats)
    stats = layer_stats(spec.model, reloaded)
    for name, timing in layer_latency(spec.model, reloaded, spec.latency_batch).items():
        stats[name].update(timing)
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
        **{k: v for k, v in fid.items() if k != "fidelity"},  # cos_min, knn10 and the metric's own keys
        "bytes_on_disk": path.stat().st_size,
        "quantized_bytes": qbytes, "theoretical_bytes": sum(s["theoretical_bytes"] for s in stats.values()),
        "bits_per_weight": 8 * qbytes / max(numel, 1),
        "latency_ratio": ratio, "latency_ms": rung_s * 1e3, "fp32_latency_ms": fp32_s * 1e3,
        "kernels": {n: s["kernel"] for n, s in stats.items()},
        "warnings": warnings_for(Facts(latency_ratio=ratio, bytes_on_disk=path.stat().st_size, above=above,
                                       kernels={n: s["kernel"] for n, s in stats.items()}, layers=stats,
                                       kept=kept, samples=sample_count(spec.eval_batches))),
        "reload_identical": bool(torch.equal(out_mem, out_disk)),
        "unseen": unseen,  # fidelity, cos_min, knn10 on the second corpus (results' unseen_corpus), or None
        "quantize_s": quant_s, "artifact": path.name, "kept_float": kept, "layers": stats,
        **({} if pipelined is None else {"pipeline": pipelined}),
    }


def run_ladder(spec: ModelSpec, rungs: Iterable[str] | Mapping[str, QuantConfig], out: Path, repeats: int = 10,
               on_rung: Callable[[str, dict | None], None] | None = None,
               pipeline: Pipeline | None = None, allocator: dict | None = None) -> dict | None:
    """Sweep ``rungs`` (names, or names already parsed to configs) on ``spec``; writes artifacts and
    ``results.json`` into ``out``. With ``pipeline`` (under torchrun): rank 0 quantises each rung and every
    rank runs its stage of the artifact (the wait for rank 0 is bounded by ``pipeline.timeout_s``); only rank 0
    returns the results (others None). ``allocator``: what the command pinned
    (:func:`~bitladder.pipeline.measure.allocator.steady_allocator`), recorded beside the machine."""
    rungs = parse_rungs(rungs)  # every rung name is checked before any work starts
    if pipeline is not None and staged.start(pipeline, spec.model, []).rank:
        for rung in rungs:
            staged.staged(rung_path(out, spec, rung), spec, pipeline, None, None)
        return None
    check_out_dir(out)
    mach = machine()
    t0 = time.perf_counter()
    ref = outputs(spec.model, spec.eval_batches)
    base = fidelity(spec, ref, ref)["fidelity"]
    unseen_ref = outputs(spec.model, spec.unseen_batches) if spec.unseen_batches else None
    results = {"schema": SCHEMA, "model": spec.name, "metric": spec.metric, "fp32_fidelity": base,
               "torch_threads": torch.get_num_threads(), "machine": mach, "allocator": allocated(allocator),
               "rungs": [],
               "unseen_corpus": spec.unseen_corpus, "unseen_missing": spec.unseen_missing}
    for rung, cfg in rungs.items():
        if on_rung:
            on_rung(rung, None)
        prev = results["rungs"][-1] if results["rungs"] else None
        row = run_rung(spec, rung, cfg, out, ref, base, repeats,
                       (prev["rung"], prev["bytes_on_disk"]) if prev else None, unseen_ref, pipeline)
        results["rungs"].append(row)
        if on_rung:
            on_rung(rung, row)
    results["wall_s"] = time.perf_counter() - t0
    write_json(out / "results.json", results)
    return results
