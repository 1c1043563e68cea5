"""The built-in causal LM (tinylm): bitladder's rungs beside optimum-quanto and HQQ, side by side in one run.

Every variant runs in its own process (:mod:`bitladder.pipeline.bench.isolated`) and all are timed in the
same interleaved rounds on 4 blocks of 128 bytes and on one block. Fidelity is measured on the 141 held-out
blocks: ``agreement`` (top-1 next-token agreement with fp32, the ladder's fidelity) and ``perplexity`` beside
``fp32_perplexity``. The cosine columns of the MiniLM rows do not apply and stay empty. Peers that are not
installed (the ``bench`` extra) are listed with the reason instead of a number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import bitladder
from bitladder import AWQ, GPTQ, HQQ, Int
from bitladder.pipeline.bench.isolated import at_batch, baseline, isolated_latency
from bitladder.pipeline.bench.only import pick
from bitladder.pipeline.bench.minilm import _hqq, _quanto, round_spread
from bitladder.pipeline.bench.minilm_rungs import W8A8_SQ
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.zoo import causal_lm

BATCHES = (4, 1)  # blocks of 128 bytes per timed call


def variants(spec) -> dict[str, Callable[[], nn.Module]]:
    """Factories of every tinylm bench variant by name (the embedding stays float, as the peers keep it)."""
    calib = spec.calib_batches

    def ours(cfg, calibrated: bool = False):
        return lambda: bitladder.quantize(spec.model, cfg, exclude=["*embed_tokens"],
                                          calib=calib if calibrated else None)

    return {
        "fp32 torch": lambda: spec.model,
        "bitladder W8 weight-only": ours(Int(8)),
        "bitladder W8A8 dynamic per-token + SmoothQuant 0.65": ours(W8A8_SQ, True),
        "bitladder W4 g32 gptq": ours(Int(4, group=32, method=GPTQ()), True),
        "bitladder W4 g32 awq": ours(Int(4, group=32, method=AWQ()), True),
        "bitladder W4 g64 asym hqq": ours(Int(4, group=64, symmetric=False, method=HQQ())),
        "optimum-quanto W8": lambda: _quanto(spec, "int8"),
        "optimum-quanto W4": lambda: _quanto(spec, "int4"),
        "hqq W4 g64": lambda: _hqq(spec),
    }


def serve_variant(name: str):
    """Build one variant in a benchmark worker: the model, its timing batches, its held-out logits."""
    spec = causal_lm.spec()
    model = variants(spec)[name]()
    out = outputs(model, spec.eval_batches)
    timed = [spec.latency_batch[:n] for n in BATCHES]
    return model, timed, {"outputs": out.numpy()}


def tinylm_rows(repeats: int = 10, only: list[str] | None = None) -> list[dict]:
    """Bench rows of every variant (or those matching ``only``, plus fp32) at each batch size."""
    spec = causal_lm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    names = pick(list(variants(spec)), only, ("fp32 torch",), "tinylm")
    got = isolated_latency({n: (f"{__name__}:serve_variant", (n,)) for n in names}, repeats, batches=len(BATCHES),
                           anchors=("fp32 torch",))
    rows = []
    for j, batch in enumerate(BATCHES):
        per = at_batch(got, j)
        for name in names:
            g, row = per[name], {"case": "tinylm", "batch": batch, "variant": name}
            if "error" in g:  # a peer that is missing or fails here is reported, not fatal
                rows.append({**row, "latency_ms": None, "ratio_vs_fp32": None, "error": g["error"]})
                continue
            fp32 = baseline(per, name, "fp32 torch")
            fid = fidelity(spec, torch.from_numpy(g["info"]["outputs"]), ref)
            rows.append({**row, "latency_ms": round(g["latency_s"] * 1e3, 2),
                         "fp32_latency_ms": round(fp32["latency_s"] * 1e3, 2),
                         "ratio_vs_fp32": round(fp32["latency_s"] / g["latency_s"], 3),
                         "ratio_vs_fp32_iqr": round_spread(fp32.get("rounds_s"), g["rounds_s"]),
                         "peak_rss_mb": g["peak_rss_mb"], "allocator": g.get("allocator"), "agreement": fid["fidelity"],
                         **({"timing_group": g["group"]} if "group" in g else {}),
                         "perplexity": fid["perplexity"], "fp32_perplexity": fid["fp32_perplexity"]})
    return rows
