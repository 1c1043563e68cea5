"""docs/RESULTS.md from docs/results/*.json: per file its command, its machine and a table of its main rows.

    python benchmarks/results_page.py [--results docs/results] [--out docs/RESULTS.md]

Driven by the JSON alone (no per-file code): the rows are the file's ``rungs`` or ``rows`` list, the
columns the keys of ``COLUMNS`` that some row carries; a column with one value in every row is written once
above the table. Files are taken in name order and numbers in fixed formats, so the page is reproducible
(``tests/test_results_page.py`` checks the committed page against the JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Columns worth a glance, in table order (the JSON keys themselves; units: docs/DESIGN.md, 'Results schema').
COLUMNS = (
    "case", "cpu_path", "shape", "batch", "tokens", "model", "network", "rung", "method", "rotate", "variant", "flops_ratio",
    "params_ratio", "speedup", "fidelity_pruned", "fidelity_recovered", "drop_pt",
    "params", "macs", "rank_bytes", "bytes_vs_one_process", "bytes_on_disk", "quantized_bytes", "bytes_fp32", "bytes_int4", "bits_per_weight",
    "stored_bytes", "build_peak_bytes", "resident_bytes", "resident_vs_stored", "resident_vs_fp32",
    "latency_ms", "ratio_vs_fp32", "ratio_vs_fp32_iqr", "ratio_vs_fp32_onnx", "stream_latency_ms",
    "stream_ratio_vs_fp32", "latency_ratio", "limit_fraction", "paired_limit_fraction", "stage_bytes", "peak_rss_mb", "rss_ratio",
    "max_abs_diff",
    "fidelity", "fidelity_drop_pt", "heldout_fidelity_drop_pt", "accuracy", "int4_drop_pt",
    "cos_mean", "cos_min", "knn10", "target_met", "quantize_s", "time_s", "train_s", "train_seconds", "error",
)
FIDELITY = {"fidelity", "accuracy", "cos_mean", "cos_min", "knn10"}
RATIOS = ("ratio", "latency_ratio", "limit_fraction", "paired_limit_fraction", "stream_ratio")
ROW_LISTS = ("rungs", "rows")
SKIP_TOP = {"schema", "command", "machine", *ROW_LISTS}


def fmt(key: str, v) -> str:
    """One cell: fixed formats per kind of value, so reruns give the same text."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ("x" if key == "shape" else "-").join(fmt(key, x) for x in v) or "-"
    if isinstance(v, float):
        if key in FIDELITY or key.endswith("fidelity"):
            return f"{v:.5f}"
        if key.endswith("_pt"):
            return f"{v:.2f}"
        if key.startswith(RATIOS):
            return f"{v:.3f}"
        return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def machine_line(m: dict | None) -> str:
    """CPU, ISA flags in force, cores/threads, package versions, then any other measured field."""
    if not m:
        return "Machine: not recorded."
    flags = ", ".join(k for k, on in sorted(m.get("flags", {}).items()) if on) or "none of the listed"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    rest = "; ".join(f"{k} {fmt(k, v)}" for k, v in m.items()
                     if k not in {"cpu", "flags", "cores", "threads", "versions"})
    parts = [f"{m.get('cpu', '?')}", f"flags {flags}", f"{m.get('cores', '?')} cores, "
             f"{m.get('threads', '?')} threads", versions, rest]
    return "Machine: " + "; ".join(p for p in parts if p) + "."


def main_rows(data: dict) -> tuple[str | None, list[dict], str]:
    """The file's main row list, its rows to show, and a note on rows left out."""
    name = next((k for k in ROW_LISTS if isinstance(data.get(k), list) and data[k]), None)
    rows = data[name] if name else []
    if any("selected" in r for r in rows):  # bench: keep the kernels auto picks, the baselines and the peers
        kept = [r for r in rows if r.get("selected") or not str(r.get("variant", "")).startswith("bitladder")]
        return name, kept, f" ({len(rows) - len(kept)} rows of kernels auto did not pick are in the JSON only)"
    return name, rows, ""


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: constant columns once, then a table of the varying ones."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    same = [c for c in cols if len(rows) > 1 and len({json.dumps(r.get(c)) for r in rows}) == 1]
    cols = [c for c in cols if c not in same]
    out = [f"All rows: {', '.join(f'{c} {fmt(c, rows[0][c])}' for c in same)}.", ""] if same else []
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(c, r.get(c)) for c in cols) + " |" for r in rows]
    return out


def section(path: Path) -> list[str]:
    """One file's section."""
    data = json.loads(path.read_text())
    out = [f"## {path.stem}", "", f"`{path.name}`, schema `{data.get('schema', 'not recorded')}`.", ""]
    out.append(f"Command: `{data['command']}`." if data.get("command") else "Command: not recorded.")
    out += ["", machine_line(data.get("machine")), ""]
    top = [f"{k} {fmt(k, v)}" for k, v in data.items() if k not in SKIP_TOP and not isinstance(v, (dict, list))]
    if top:
        out += ["Top level: " + "; ".join(top).rstrip(".") + ".", ""]
    name, rows, note = main_rows(data)
    more = [f"`{k}` ({len(v)})" if isinstance(v, list) else f"`{k}`" for k, v in data.items()
            if k not in SKIP_TOP and k != name and isinstance(v, (dict, list))]
    companions = sorted(p.name for p in path.parent.iterdir()
                        if p.name.startswith((path.stem + ".", path.stem + "-")) and p.suffix != ".json")
    if more:
        out += ["Also in the JSON: " + ", ".join(more) + ".", ""]
    if companions:
        out += ["Companion files: " + ", ".join(companions) + ".", ""]
    if rows:
        out += [f"`{name}`: {len(rows)} shown{note}.", ""] + table(rows) + [""]
    return out


def render(results: Path) -> str:
    """The whole page."""
    lines = ["# Results", "",
             "Generated from docs/results/*.json by `python benchmarks/results_page.py` (`make results-page`); "
             "do not edit by hand. Column names are the JSON keys (units: docs/DESIGN.md, 'Results schema'); "
             "figures quoted without a JSON file are in docs/results/notes.md.", ""]
    for path in sorted(results.glob("*.json")):
        lines += section(path)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    args = ap.parse_args()
    args.out.write_text(render(args.results))


if __name__ == "__main__":
    main()
