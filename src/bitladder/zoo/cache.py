"""Where built-in models cache what they train ($BITLADDER_CACHE, else $XDG_CACHE_HOME/bitladder), and the
dispatch their shipped weights were trained under."""

from __future__ import annotations

import os
from pathlib import Path

#: the environment a built-in model's shipped weights were trained under: float training sums in another
#: order on an AVX-512 host (sgemm, ATen's kernels) and ends elsewhere. It reproduced the bits on AMD EPYC
#: Zen 3, 4 and 5; on an Intel Xeon (AMX) MKL and oneDNN still sum in another order, and training ends beside
#: the shipped model, not on it (tests/zoo/pinned.py)
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
          "OMP_NUM_THREADS": "1"}


def cache_dir() -> Path:
    """The cache folder: $BITLADDER_CACHE, else bitladder under $XDG_CACHE_HOME or ~/.cache; created if missing."""
    root = os.environ.get("BITLADDER_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bitladder"
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
