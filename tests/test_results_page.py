"""docs/RESULTS.md is generated from docs/results/*.json: the committed page must be what the generator
writes now (rerun `make results-page` after changing a result file), and it must cover every file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "results_page.py"
PAGE = ROOT / "docs" / "RESULTS.md"


def test_committed_page_matches_the_json(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, cwd=tmp_path)
    assert out.read_text() == PAGE.read_text(), "docs/RESULTS.md is stale: run `make results-page`"


def test_every_result_file_has_a_section():
    page = PAGE.read_text()
    files = sorted((ROOT / "docs" / "results").glob("*.json"))
    assert files
    for f in files:
        assert f"## {f.stem}\n" in page and f"`{f.name}`" in page, f.name
