"""The report's figures, each a base64 PNG (matplotlib, Agg): fidelity against bits, bytes per rung,
Pareto fronts (fidelity against size and against latency), the per-layer sensitivity heatmap."""

from __future__ import annotations

import base64
import io


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """The figure as a base64-encoded PNG string; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (smaller x, larger y), sorted by x.

    >>> pareto([(1, 0.5), (2, 0.9), (3, 0.8), (0.5, 0.1)])
    [3, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fidelity_vs_bits(rows: list[dict], model: str, label: str) -> str:
    """Base64 PNG of fidelity against bits per weight (log2 axis), one labelled point per rung."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot([r["bits_per_weight"] for r in rows], [r["fidelity"] for r in rows], "o")
    for i, r in enumerate(rows):  # staggered labels: neighbouring rungs often share a point
        ax.annotate(r["rung"], (r["bits_per_weight"], r["fidelity"]), textcoords="offset points",
                    xytext=(4, 4 - 11 * (i % 3)), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("effective bits per weight (scales counted)")
    ax.set_ylabel(label)
    ax.set_title(f"{model}: fidelity against bits per weight")
    ax.grid(alpha=0.3)
    return png(fig)


def bytes_per_rung(rows: list[dict], model: str) -> str:
    """Base64 PNG bar chart (log scale) of bytes on disk and quantised-layer bytes per rung."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    names = [r["rung"] for r in rows]
    ax.bar(names, [r["bytes_on_disk"] for r in rows], label="artifact on disk")
    ax.bar(names, [r["quantized_bytes"] or 0 for r in rows], label="quantised layers", alpha=0.7)
    ax.set_yscale("log")
    ax.set_ylabel("bytes")
    ax.set_title(f"{model}: bytes per rung")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return png(fig)


def pareto_plot(points: list[dict], x: str, xlabel: str, label: str, title: str, log: bool = True) -> str:
    """Every point grey, the Pareto front (smaller ``x``, higher fidelity) joined and labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    pts = [(p[x], p["fidelity"]) for p in points]
    ax.scatter(*zip(*pts), c="#aaa", s=14, label="all")
    front = pareto(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", c="C3", label="Pareto front")
    for i in front:
        ax.annotate(points[i].get("label", ""), pts[i], textcoords="offset points", xytext=(4, 4), fontsize=7)
    xs = [p[0] for p in pts]
    if log and min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def bytes_per_layer(summary: list[dict], model: str) -> str:
    """Bytes of each weighted layer before (fp32) and after compression, side by side."""
    import numpy as np

    plt = _plt()
    names = [r["layer"] for r in summary]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(names) + 2), 4))
    ax.bar(x - 0.2, [r["bytes_before"] for r in summary], 0.4, label="before")
    ax.bar(x + 0.2, [r["bytes_after"] for r in summary], 0.4, label="after")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("bytes")
    ax.set_title(f"{model}: bytes per layer, before and after")
    ax.legend()
    return png(fig)


def heatmap(table: dict, key: str = "divergence") -> str:
    """Layers down, rungs across: log10 of the relative output error of quantising that layer alone."""
    import numpy as np

    plt = _plt()
    layers = list(table)
    rungs = list(next(iter(table.values())))
    data = np.array([[table[n][r][key] for r in rungs] for n in layers])
    fig, ax = plt.subplots(figsize=(1.2 * len(rungs) + 3, 0.28 * len(layers) + 1.5))
    im = ax.imshow(np.log10(np.maximum(data, 1e-12)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(rungs)), rungs, rotation=30)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    fig.colorbar(im, ax=ax, label=f"log10 {key} (relative output error)")
    ax.set_title("per-layer sensitivity (calibration data)")
    return png(fig)
