"""Retrain a built-in model in a fresh process under the pinned dispatch and compare with its shipped weights.

Bit equality holds only where the CPU's BLAS and oneDNN sum in the order of the CPU that trained the file:
on the AMD EPYC generations (Zen 3, 4, 5) it did; on an Intel Xeon with AMX the same pin ended 1.2 % away
(relative norm, digits' worst tensor) with every test prediction equal, and tinylm's 250 steps of AdamW ended up
to 0.46 away yet predicting as the shipped model does. So the check, the same on every host, is the model's
behaviour, which each test asserts, and for a small, stable training the closeness of every tensor.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bitladder.zoo.cache import PINNED


def retrain(shipped: Path, train_expr: str, imports: str, out: Path, timeout: int,
            rel_tol: float | None = None) -> tuple[dict, dict]:
    """Run ``train_expr`` (after ``imports``) in a new Python under PINNED, save its state dict to ``out`` and
    return (retrained, shipped) state dicts (PINNED is read when torch starts, so not in this process); with
    ``rel_tol``, assert every tensor lies within it of the shipped one (|retrained - shipped| / |shipped|)."""
    code = (f"{imports}; from safetensors.torch import save_file; m = {train_expr}; "
            f"save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **PINNED}, check=True, timeout=timeout)
    got, want = load_file(str(out)), load_file(str(shipped))
    assert got.keys() == want.keys()
    if rel_tol is None:
        return got, want
    far = {k: float((got[k] - w).norm() / w.norm().clamp(min=1e-12)) for k, w in want.items()}
    assert max(far.values()) < rel_tol, far
    return got, want
