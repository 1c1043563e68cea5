"""Any model bitladder resolves (a built-in, a factory, a Hugging Face folder, a user's text): fp32 beside the
rungs asked for, side by side in one run.

Every variant runs in its own process (:mod:`bitladder.pipeline.bench.isolated`), resolving the model and
quantising it there (calibrated rungs on the model's calibration data), and all are timed in the same
interleaved rounds on the model's latency batch and on its first sample alone (the one-request edge case:
first call after a pause, and five more back to back, ``warm_*``, as in the MiniLM suite).
Fidelity is the model's own metric on its evaluation data against fp32, with the metric's extra figures
(cosine minimum and kNN@10, perplexity) where it has them.
"""

from __future__ import annotations

import torch

from bitladder.errors import BitladderError
from bitladder.methods.quantize.api import quantize
from bitladder.pipeline.bench.isolated import at_batch, baseline, isolated_latency
from bitladder.pipeline.bench.minilm import BURSTS, round_spread, warm_fields
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.zoo.registry import resolve

#: the column each metric's headline figure takes in bench rows (the MiniLM and tinylm suites' names)
NAMED = {"cosine": "cos_mean", "perplexity": "agreement", "accuracy": "accuracy"}


def first_sample(batch):
    """The batch's first sample alone (a dict of tensors, a tensor, or a tuple of them), padding kept."""
    if isinstance(batch, dict):
        return {k: v[:1] for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(b[:1] for b in batch)
    return batch[:1]


def rows_of(batch) -> int:
    """Samples in a batch."""
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)


def serve_variant(model: str, data: str | None, rung: str):
    """Build one variant in a benchmark worker: the model quantised to ``rung`` (``fp32``: as it is), its two
    timing batches, and its outputs on the evaluation data."""
    from bitladder.pipeline.ladder.rungs import parse_rungs

    spec = resolve(model, data)
    if rung == "fp32":
        m = spec.model
    else:
        cfg = parse_rungs([rung])[rung]
        m = quantize(spec.model, cfg, calib=spec.calib_batches if cfg.needs_calibration else None)
    out = outputs(m, spec.eval_batches)
    return m, [spec.latency_batch, first_sample(spec.latency_batch)], {"outputs": out.numpy()}


def model_rows(model: str, rungs: list[str], repeats: int = 10, data: str | None = None) -> list[dict]:
    """Bench rows of fp32 and each rung of ``model`` at the latency batch and at one sample."""
    from bitladder.pipeline.ladder.rungs import parse_rungs

    spec = resolve(model, data)  # a bad model, rung or calibration need fails here, before any worker starts
    rungs = [r for r in (rungs or spec.default_rungs) if r != "fp32"]
    for rung, cfg in parse_rungs(rungs).items():
        if cfg.needs_calibration and not spec.calib_batches:
            raise BitladderError(f"rung {rung!r} needs calibration data and model {spec.name!r} has none")
    ref = outputs(spec.model, spec.eval_batches)
    names = ["fp32", *rungs]
    got = isolated_latency({n: ("bitladder.pipeline.bench.model:serve_variant", (model, data, n)) for n in names},
                           repeats, batches=2, bursts=BURSTS, anchors=("fp32",))
    rows = []
    for j, batch in enumerate((rows_of(spec.latency_batch), 1)):
        per = at_batch(got, j)
        if "error" in per["fp32"]:
            raise BitladderError(f"{spec.name}: the fp32 worker failed: {per['fp32']['error']}")
        for name in names:
            g, row = per[name], {"case": spec.name, "batch": batch, "variant": name if name == "fp32" else
                                 f"bitladder {name}"}
            if "error" in g:
                rows.append({**row, "latency_ms": None, "ratio_vs_fp32": None, "error": g["error"]})
                continue
            fp32 = baseline(per, name, "fp32")
            fid = fidelity(spec, torch.from_numpy(g["info"]["outputs"]), ref)
            named = {NAMED[spec.metric]: fid.pop("fidelity")} if spec.metric in NAMED else {}
            rows.append({**row, "latency_ms": round(g["latency_s"] * 1e3, 3),
                         "fp32_latency_ms": round(fp32["latency_s"] * 1e3, 3),
                         "ratio_vs_fp32": round(fp32["latency_s"] / g["latency_s"], 3),
                         "ratio_vs_fp32_iqr": round_spread(fp32.get("rounds_s"), g["rounds_s"]),
                         "peak_rss_mb": g["peak_rss_mb"], "allocator": g.get("allocator"), "metric": spec.metric,
                         **named,
                         **({"timing_group": g["group"]} if "group" in g else {}),
                         **{k: v for k, v in fid.items() if v is not None}, **warm_fields(g, fp32)})
    return rows
