"""Retrain a built-in model in a fresh process under the pinned dispatch and compare with its shipped weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bitladder.zoo.cache import PINNED


def assert_retraining_gives(shipped: Path, train_expr: str, imports: str, out: Path, timeout: int) -> None:
    """Run ``train_expr`` (after ``imports``) in a new Python under PINNED, save its state dict to ``out``
    and assert it equals ``shipped`` bit for bit (PINNED is read when torch starts, so not in this process)."""
    code = (f"{imports}; from safetensors.torch import save_file; m = {train_expr}; "
            f"save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **PINNED}, check=True, timeout=timeout)
    got, want = load_file(str(out)), load_file(str(shipped))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
