"""One self-contained HTML report (figures embedded as PNG, no network) of a ladder, a recipe run or
a tune study: the table, fidelity/size plots and Pareto fronts, the per-layer sensitivity heatmap, a
before/after model summary, robustness under perturbed inputs, and every warning.

A small script marks ``<body data-figures="loaded/total">`` once the page has decoded its images, so a
headless browser can check that the figures render.
"""

from __future__ import annotations

import html
from pathlib import Path

from bitladder.atomic import atomic_path
from bitladder.pipeline.report import figures
from bitladder.pipeline.measure.machine import one_line

COLUMNS = ("rung", "fidelity", "fidelity_drop_pt", "cos_min", "knn10", "bytes_on_disk", "quantized_bytes",
           "theoretical_bytes", "bits_per_weight", "latency_ratio")
OPTIONAL = ("perplexity", "fp32_perplexity")  # metric-specific columns, shown when the rows carry them
LABELS = {"accuracy": "accuracy", "cosine": "mean cosine to fp32", "perplexity": "next-token agreement with fp32"}
_CHECK = ("<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.figures="
          "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def table(rows: list[dict], cols: tuple[str, ...] | list[str], title: str = "") -> str:
    """An HTML table of ``cols`` over ``rows`` under an optional ``title``; empty string for no rows."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"{f'<h2>{html.escape(title)}</h2>' if title else ''}<table><tr>{head}</tr>{body}</table>"


def columns(rows: list[dict]) -> tuple[str, ...]:
    """The result table's columns: the fixed ones, then each optional one some row carries."""
    return COLUMNS + tuple(c for c in OPTIONAL if any(r.get(c) is not None for r in rows))


def sqnr_table(results: dict) -> str:
    """Per-layer weight SQNR (dB), layers down, rungs across."""
    rungs = [r for r in results["rungs"] if r.get("layers")]
    layers = list(dict.fromkeys(n for r in rungs for n in r["layers"]))
    rows = [{"layer": n, **{r["rung"]: r["layers"].get(n, {}).get("sqnr_db") for r in rungs}} for n in layers]
    return table(rows, ["layer"] + [r["rung"] for r in rungs], "Per-layer weight SQNR (dB)")


def _points(results: dict) -> list[dict]:
    """Points for the Pareto fronts: tune trials if any, else the rungs (plus fp32 as the reference)."""
    if results.get("trials"):  # size of a trial: bytes of its compressed layers (no artifact is written per trial)
        # finished trials only: a worker killed mid-trial leaves the figures it had written (one at a time)
        return [{**t, "label": f"#{t['number']}", "size": t["model_bytes"]} for t in results["trials"]
                if t.get("state", "COMPLETE") == "COMPLETE"
                and all(t.get(k) is not None for k in ("fidelity", "model_bytes", "latency_ms"))]
    pts = [{"label": r["rung"], "fidelity": r["fidelity"], "size": r["bytes_on_disk"],
            "latency_ms": r["latency_ms"]} for r in results["rungs"] if r.get("latency_ms")]
    first = next((r for r in results["rungs"] if r.get("fp32_latency_ms")), None)
    if first and not any(p["label"] == "fp32" for p in pts) and first.get("fp32_bytes"):
        pts.append({"label": "fp32", "fidelity": results["fp32_fidelity"], "size": first["fp32_bytes"],
                    "latency_ms": first["fp32_latency_ms"]})
    return pts


def render_figures(results: dict) -> dict[str, str]:
    """Every figure the results support, as {caption: base64 PNG}."""
    rows, model = results["rungs"], results["model"]
    label = LABELS.get(results["metric"], results["metric"])
    out = {}
    if len(rows) > 1:
        out["fidelity vs bits per weight"] = figures.fidelity_vs_bits(rows, model, label)
        out["bytes per rung"] = figures.bytes_per_rung(rows, model)
    if results.get("summary"):
        out["bytes per layer, before and after"] = figures.bytes_per_layer(results["summary"], model)
    pts = _points(results)
    if pts:
        xlabel = "bytes of the compressed layers" if results.get("trials") else "bytes on disk (whole artifact)"
        out["Pareto front: fidelity vs size"] = figures.pareto_plot(
            pts, "size", xlabel, label, f"{model}: fidelity against size")
        out["Pareto front: fidelity vs latency"] = figures.pareto_plot(
            pts, "latency_ms", "latency (ms, median)", label, f"{model}: fidelity against latency", log=False)
    if results.get("sensitivity"):
        out["per-layer sensitivity"] = figures.heatmap(results["sensitivity"])
    return out


def _warnings(results: dict) -> str:
    items = [f"<li><b>{html.escape(r['rung'])}</b>: {html.escape(w)}</li>" for r in results["rungs"]
             for w in r.get("warnings", [])]
    items += [f"<li>{html.escape(w)}</li>" for w in results.get("warnings", [])]
    return f"<h2>Warnings</h2><ul>{''.join(items) or '<li>none</li>'}</ul>"


def render(results: dict) -> str:
    """The self-contained HTML report of a ladder, recipe or tune ``results`` dict."""
    imgs = render_figures(results)
    figs = "".join(f'<figure><img alt="{html.escape(k)}" src="data:image/png;base64,{v}">'
                   f"<figcaption>{html.escape(k)}</figcaption></figure>" for k, v in imgs.items())
    kind = "tune" if results.get("trials") else "recipe" if results.get("steps") is not None else "ladder"
    best = results.get("best")
    parts = [
        table(results["rungs"], columns(results["rungs"]), "Best configuration" if kind == "tune" else "Results"),
        figs, _warnings(results),
        table(results.get("steps", []), ("step", "line", "seconds", "fidelity", "params", "nonzero"), "Steps"),
        table(results.get("summary", []), ("layer", "params_before", "params_after", "bytes_before",
                                           "bytes_after", "format_after"), "Model before / after"),
        table(results.get("robustness", []), ("kind", "level", "fp32_fidelity", "fidelity", "cos_min"),
              "Robustness (same perturbed inputs for fp32 and the compressed model)"),
        table(results.get("trials", []), ("number", "state", "bits_per_weight", "fidelity", "fidelity_drop_pt",
                                          "model_bytes", "latency_ms", "feasible", "worker"), "Trials"),
        sqnr_table(results),
    ]
    intro = (f"metric: {html.escape(results['metric'])}; fp32 fidelity {results['fp32_fidelity']:.4f}; "
             f"torch threads {results.get('torch_threads')}; wall time {results.get('wall_s', 0):.1f} s. "
             "Latency ratio = fp32 latency / this latency, interleaved runs, same inputs.")
    if results.get("machine"):
        intro += f" Machine: {html.escape(one_line(results['machine']))}."
    if best:
        intro += f" Best trial: #{best['number']} ({html.escape(str(best.get('summary', '')))})."
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bitladder {kind}: {html.escape(results['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}</style>{_CHECK}</head><body>
<h1>bitladder {kind}: {html.escape(results['model'])}</h1><p>{intro}</p>{''.join(parts)}</body></html>"""


def write_report(results: dict, path: Path) -> Path:
    """Write the HTML report of ``results`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(render(results), encoding="utf-8")
    return path
