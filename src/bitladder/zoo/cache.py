"""Where built-in models cache what they train: $BITLADDER_CACHE, else $XDG_CACHE_HOME/bitladder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: $BITLADDER_CACHE, else bitladder under $XDG_CACHE_HOME or ~/.cache; created if missing."""
    root = os.environ.get("BITLADDER_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bitladder"
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
