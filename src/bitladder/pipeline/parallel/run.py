"""``bitladder run ARTIFACT --pipeline N``: the artifact's model in N stages, one per process, over its
evaluation batches; the last stage scores the outputs against the fp32 model as ``run`` does.

Every rank builds the model's spec for its evaluation batches (built-in models are small; a model larger
than one process is evaluated from Python with
:func:`~bitladder.pipeline.parallel.evaluate.evaluate_pipelined` and a factory instead).
"""

from __future__ import annotations

import os

from bitladder.errors import BitladderError
from bitladder.io.artifact import read_header
from bitladder.methods.train import ddp
from bitladder.pipeline.parallel.evaluate import Pipeline, evaluate_pipelined
from bitladder.pipeline.parallel.world import open_world

LABELS = {"perplexity": "next-token agreement with fp32"}  # what ``fidelity`` is, where the name does not say


def stage_summary(rows: list[dict]) -> str:
    """One line: each stage's units, stored MiB and peak RSS."""
    return "; ".join(f"stage {i + 1}: units {r['units'][0]}-{r['units'][1] - 1}, {r['bytes'] / 2**20:.2f} MiB, "
                     f"peak RSS {r['peak_rss_mb']:.0f} MB" for i, r in enumerate(rows))


def pipeline_line(p: dict) -> str:
    """One line for a staged evaluation's record (:func:`~bitladder.pipeline.parallel.staged.staged`)."""
    diff = "" if p.get("max_abs_diff") is None else f", max |difference| to one process {p['max_abs_diff']:.3g}"
    return (f"pipeline: {p['stages']} stage(s), {p['microbatches']} micro-batches; fidelity {p['fidelity']:.4f}"
            f"{diff} ({stage_summary(p['stage_rows'])})")


def run_pipelined(artifact: str | os.PathLike, model: str | None, cfg: Pipeline) -> str | None:
    """The line the last stage prints (None on the other ranks)."""
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo.registry import BUILTINS, resolve

    meta, _ = read_header(artifact)
    w = open_world(cfg.stages, cfg.timeout_s)  # a launch that does not fit fails now, before any model is built
    source = model or meta.get("source")
    if source not in BUILTINS and model is None:
        raise BitladderError(f"{artifact} is not of a built-in model; pass its factory: "
                             "--model package.module:function")
    spec = resolve(source)
    result = evaluate_pipelined(artifact, spec.eval_batches, cfg, factory=spec.fresh_model)
    ddp.close(w)
    if result.outputs is None:
        return None
    fid = fidelity(spec, result.outputs, outputs(spec.model, spec.eval_batches))
    extra = "" if fid["cos_min"] is None else f", cos min {fid['cos_min']:.4f}, kNN@10 {fid['knn10']:.3f}"
    ppl = "" if fid.get("perplexity") is None else f", perplexity {fid['perplexity']:.3f}"
    stages = f"{cfg.stages} pipeline stage{'s' * (cfg.stages > 1)}"
    return (f"{artifact}: {source} ran on {len(result.outputs)} inputs in {stages} "
            f"({stage_summary(result.stages)}); {LABELS.get(spec.metric, spec.metric)} {fid['fidelity']:.4f}{ppl}{extra}")
