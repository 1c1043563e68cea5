"""Registered number kinds; importing this package registers the built-in ones."""

from __future__ import annotations

import importlib

from bitladder.formats.kinds.base import KINDS, Kind, kind

BUILTIN = ("float", "int", "ternary", "binary", "codebook", "normal")

for _name in BUILTIN:
    importlib.import_module(f"bitladder.formats.kinds.{_name}")

__all__ = ["KINDS", "Kind", "kind", "BUILTIN"]
