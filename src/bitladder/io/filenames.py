"""File names made from model, rung and study names: ``module:function`` factories put ``:`` into them, which
Windows and many sync tools refuse."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_stem(name: str) -> str:
    """``name`` with every run of characters outside letters, digits and ``._+-`` replaced by one ``-``."""
    return _UNSAFE.sub("-", name).strip("-.") or "model"
