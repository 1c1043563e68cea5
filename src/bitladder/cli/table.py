"""Rich tables for the CLI."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table


# extra columns per metric: (header, row key, format)
METRIC_COLUMNS = {"cosine": (("cos min", "cos_min", ".4f"), ("kNN@10", "knn10", ".3f")),
                  "perplexity": (("ppl", "perplexity", ".3f"), ("fp32 ppl", "fp32_perplexity", ".3f"))}


def ladder_table(results: dict) -> Table:
    """Rich table of a ladder or recipe ``results`` dict, one row per rung (plus the metric's own columns)."""
    extra = METRIC_COLUMNS.get(results["metric"], ())
    unseen = results.get("unseen_corpus")
    if unseen:  # fidelity on the second corpus (zoo.unseen), beside the built-in one
        extra = (*extra, (f"fid {unseen}", "unseen_fidelity", ".4f"))
    kind = "recipe" if "recipe" in results else "ladder"
    t = Table(title=escape(f"bitladder {kind}: {results['model']} ({results['metric']})"))
    for c in ("rung", "fidelity", "drop pt", *(h for h, _, _ in extra), "disk bytes",
              "quant bytes", "theory bytes", "bits/w", "x fp32 speed", "warnings"):
        t.add_column(c, justify="left" if c in ("rung", "warnings") else "right")
    for r in results["rungs"]:
        r = {**r, "unseen_fidelity": (r.get("unseen") or {}).get("fidelity")}
        cells = ("–" if r.get(k) is None else format(r[k], f) for _, k, f in extra)
        t.add_row(escape(r["rung"]), f"{r['fidelity']:.4f}", f"{r['fidelity_drop_pt']:.2f}", *cells,
                  f"{r['bytes_on_disk']:,}", f"{r['quantized_bytes']:,}", f"{r['theoretical_bytes']:,.0f}",
                  f"{r['bits_per_weight']:.2f}", f"{r['latency_ratio']:.2f}", str(len(r["warnings"])))
    return t


def warning_lines(rows: list[dict]) -> list[str]:
    """One line per warning of each row ("rung: sentence"), for printing under a table."""
    return [f"[yellow]warning[/yellow] {escape(r.get('rung', ''))}: {escape(w)}" if r.get("rung")
            else f"[yellow]warning[/yellow] {escape(w)}" for r in rows for w in r.get("warnings", [])]


def inspect_table(path: Path, meta: dict, info: dict) -> Table:
    """Rich table of an artifact's quantised layers from its metadata and header ``info``, with byte totals."""
    t = Table(title=escape(f"{path} (source: {meta.get('source')}, config: {(meta.get('config') or {}).get('type')})"))
    for c in ("layer", "handler", "format", "shape", "layout", "bytes"):
        t.add_column(c, justify="right" if c == "bytes" else "left")
    total = 0
    for name, lm in sorted(meta["layers"].items()):
        nbytes = sum(v["nbytes"] for k, v in info.items() if k.startswith(f"{name}.weight_"))
        total += nbytes
        lay = lm["layout"]
        desc = lay["granularity"] + (f" {lay['group']}" if lay["granularity"] == "group" else "")
        t.add_row(escape(name), escape(str(lm["handler"])), escape(str(lm["qtype"])), "x".join(map(str, lm["shape"])), desc, f"{nbytes:,}")
    other = sum(v["nbytes"] for v in info.values()) - total
    t.add_row("(quantised layers)", "", "", "", "", f"{total:,}")
    t.add_row("(other tensors)", "", "", "", "", f"{other:,}")
    return t


def bench_table(rows: list[dict]) -> Table:
    """Rich table of bench rows; a missing value shows as a dash, the auto-selected variant is marked ``*``."""
    t = Table(title="bitladder bench (ratio = fp32 latency / variant latency, same run; MiniLM: (quartiles of "
                    "the per-round ratios); warm = calls back to back, not after a pause; stream = weights streamed from "
                    "memory, not the cache; limit = fraction of read "
                    "bandwidth at batch 1 (streamed; [paired with the read probe round by round]), of the GEMM peak "
                    "above)")
    for c in ("case", "shape", "batch", "variant", "ms", "stream ms", "x fp32", "x fp32 warm", "x fp32 ONNX", "limit",
              "cos mean", "cos min",
              "kNN@10", "next-token", "ppl", "accuracy", "peak MB"):
        t.add_column(c, justify="left" if c in ("case", "variant") else "right")

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    def ratio(r, key):  # "2.29 (2.21-2.37)": the quartiles of the per-round ratios, where the bench has them
        spread = r.get(f"{key}_iqr")
        return f(r.get(key), ".2f") + ("" if not spread else f" ({spread[0]:.2f}-{spread[1]:.2f})")

    def limit(r):  # "0.70 [0.78]": the fraction, and paired round by round where the bench has it
        paired = r.get("paired_limit_fraction")
        return f(r.get("limit_fraction"), ".2f") + ("" if paired is None else f" [{paired:.2f}]")

    for r in rows:
        shape = "x".join(map(str, r["shape"])) if r.get("shape") else ""
        variant = r["variant"] + (" *" if r.get("selected") else "") + (f" ({r['error']})" if r.get("error") else "")
        t.add_row(r["case"], shape, str(r.get("batch", "")), escape(variant), f(r.get("latency_ms"), ".3f"),
                  f(r.get("stream_latency_ms"), ".3f"), ratio(r, "ratio_vs_fp32"), ratio(r, "warm_ratio_vs_fp32"),
                  ratio(r, "ratio_vs_fp32_onnx"), limit(r),
                  f(r.get("cos_mean"), ".4f"),
                  f(r.get("cos_min"), ".4f"), f(r.get("knn10"), ".3f"), f(r.get("agreement"), ".4f"),
                  f(r.get("perplexity"), ".3f"), f(r.get("accuracy"), ".4f"), f(r.get("peak_rss_mb"), ".0f"))
    return t
