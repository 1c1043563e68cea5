"""The report opens in a real browser: headless Chromium loads it with the network off and every
embedded figure decodes (the page's own check writes loaded/total into <body data-figures>)."""

import re
import shutil
import subprocess

import pytest

from bitladder.pipeline.recipe.compress import run_recipe
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.pipeline.report.html import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--proxy-server=127.0.0.1:9", "--virtual-time-budget=8000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_every_figure_in_headless_chromium(digits_spec, tmp_path):
    r = parse_recipe("model: digits\nname: b\nsteps:\n  - prune: {sparsity: 0.3}\n  - quantize: {rung: int4-g32}\n"
                     "  - evaluate: {repeats: 2, noise: [0.25], sensitivity: [int8, int2-g32-asym]}\n")
    page = write_report(run_recipe(r, digits_spec, tmp_path), tmp_path / "report.html")
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-figures="(\d+)/(\d+)"', dom.stdout)
    assert m, dom.stdout[:500]
    assert m.group(1) == m.group(2) == "4"  # bytes per layer, two Pareto fronts, sensitivity heatmap
    for heading in ("Model before / after", "Robustness", "Warnings"):
        assert heading in dom.stdout
    shot = tmp_path / "shot.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 20_000  # a page with figures, not a blank one
