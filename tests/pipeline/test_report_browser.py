"""The report opens in a real browser: headless Chromium loads it with the network off, every embedded
figure decodes (the page's own check writes loaded/total into <body data-figures>), its tables are there and
the page logs nothing to the console — for a recipe run and for a tune study."""

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bitladder.pipeline.recipe.compress import run_recipe
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.pipeline.report.html import write_report
from bitladder.pipeline.tune import study as T
from bitladder.pipeline.tune.run import run_tune

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--proxy-server=127.0.0.1:9", "--virtual-time-budget=8000", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=120)


def rendered(page: Path) -> str:
    """The DOM after load; fails on any console message (Chromium logs each one as a ':CONSOLE' line)."""
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [x for x in dom.stderr.splitlines() if ":CONSOLE" in x]
    assert not console, console
    return dom.stdout


def figures(dom: str) -> tuple[int, int]:
    m = re.search(r'data-figures="(\d+)/(\d+)"', dom)
    assert m, dom[:500]
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_every_figure_in_headless_chromium(digits_spec, tmp_path):
    r = parse_recipe("model: digits\nname: b\nsteps:\n  - prune: {sparsity: 0.3}\n  - quantize: {rung: int4-g32}\n"
                     "  - evaluate: {repeats: 2, noise: [0.25], sensitivity: [int8, int2-g32-asym]}\n")
    page = write_report(run_recipe(r, digits_spec, tmp_path), tmp_path / "report.html")
    dom = rendered(page)
    assert figures(dom) == (4, 4)  # bytes per layer, two Pareto fronts, sensitivity heatmap
    for heading in ("Model before / after", "Robustness", "Warnings"):
        assert heading in dom
    shot = tmp_path / "shot.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 20_000  # a page with figures, not a blank one


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_tune_report_has_the_compress_report_sections_in_headless_chromium(tmp_path):
    cfg = T.TuneConfig(max_drop=100.0, trials=4, formats=("int8", "int4-g64", "ternary"), sparsity=(0.0, 0.5),
                       energy=(1.0,), repeats=1)
    res = run_tune("digits", cfg, tmp_path)
    dom = rendered(write_report(res, tmp_path / "report.html"))
    assert figures(dom) == (4, 4)  # two Pareto fronts over the trials, bytes per layer, sensitivity heatmap
    for caption in ("Pareto front: fidelity vs size", "Pareto front: fidelity vs latency",
                    "bytes per layer, before and after", "per-layer sensitivity"):
        assert f"<figcaption>{caption}</figcaption>" in dom
    for heading in ("Best configuration", "Warnings", "Model before / after", "Robustness", "Trials"):
        assert f"<h2>{heading}" in dom
    assert dom.count("<tr>") > len(res["trials"]) + len(res["summary"])  # the tables carry their rows
    warned = res["rungs"][0]["warnings"]
    assert all(html.escape(w, quote=False) in dom for w in warned) and ("<li>none</li>" in dom) == (not warned)
