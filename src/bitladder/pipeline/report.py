"""A self-contained HTML report of a ladder run: table + plots embedded as PNG (no network needed)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from bitladder.atomic import atomic_path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(results: dict) -> dict[str, str]:
    """Base64 PNGs: fidelity against bits per weight, and bytes per rung."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rungs"]
    label = "accuracy" if results["metric"] == "accuracy" else "mean cosine to fp32"
    fig, ax = plt.subplots(figsize=(6.4, 4))
    xs, ys = [r["bits_per_weight"] for r in rows], [r["fidelity"] for r in rows]
    ax.plot(xs, ys, "o")
    for i, r in enumerate(rows):  # staggered labels: neighbouring rungs often share a point
        ax.annotate(r["rung"], (r["bits_per_weight"], r["fidelity"]), textcoords="offset points",
                    xytext=(4, 4 - 11 * (i % 3)), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("effective bits per weight (scales counted)")
    ax.set_ylabel(label)
    ax.set_title(f"{results['model']}: fidelity against bits per weight")
    ax.grid(alpha=0.3)
    out = {"fidelity_vs_bits": _png(fig)}
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    names = [r["rung"] for r in rows]
    ax.bar(names, [r["bytes_on_disk"] for r in rows], label="artifact on disk")
    ax.bar(names, [r["quantized_bytes"] for r in rows], label="quantised layers", alpha=0.7)
    ax.set_yscale("log")
    ax.set_ylabel("bytes")
    ax.set_title(f"{results['model']}: bytes per rung")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    out["bytes_per_rung"] = _png(fig)
    plt.close(fig)
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return html.escape(str(v))


COLUMNS = ("rung", "fidelity", "fidelity_drop_pt", "cos_min", "knn10", "bytes_on_disk", "quantized_bytes",
           "theoretical_bytes", "bits_per_weight", "latency_ratio")


def sqnr_table(results: dict) -> str:
    """Per-layer weight SQNR (dB), layers down, rungs across."""
    rungs = [r for r in results["rungs"] if r.get("layers")]
    layers = list(dict.fromkeys(n for r in rungs for n in r["layers"]))
    if not layers:
        return ""
    head = "<th>layer</th>" + "".join(f"<th>{html.escape(r['rung'])}</th>" for r in rungs)
    rows = []
    for n in layers:
        cells = "".join(f"<td>{_fmt(r['layers'].get(n, {}).get('sqnr_db'))}</td>" for r in rungs)
        rows.append(f"<tr><td style='text-align:left'>{html.escape(n)}</td>{cells}</tr>")
    return f"<h2>Per-layer weight SQNR (dB)</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def render(results: dict) -> str:
    imgs = plots(results)
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in COLUMNS) + "</tr>" for r in results["rungs"])
    warn = "".join(f"<li><b>{html.escape(r['rung'])}</b>: {html.escape(w)}</li>"
                   for r in results["rungs"] for w in r["warnings"])
    figs = "".join(f'<figure><img alt="{k}" src="data:image/png;base64,{v}"><figcaption>{k}</figcaption></figure>'
                   for k, v in imgs.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bitladder: {html.escape(results['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>bitladder ladder: {html.escape(results['model'])}</h1>
<p>metric: {html.escape(results['metric'])}; fp32 fidelity {results['fp32_fidelity']:.4f};
torch threads {results.get('torch_threads')}; wall time {results.get('wall_s', 0):.1f} s.
Latency ratio = fp32 latency / rung latency, interleaved runs, same inputs.</p>
<table><tr>{head}</tr>{body}</table>{figs}<h2>Warnings</h2><ul>{warn or '<li>none</li>'}</ul>
{sqnr_table(results)}</body></html>"""


def write_report(results: dict, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(render(results), encoding="utf-8")
    return path
