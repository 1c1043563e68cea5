"""Registered recipe steps, one file each; importing this package registers the built-in ones."""

from __future__ import annotations

import importlib

from bitladder.pipeline.recipe.steps.base import STEPS, Selected, State, StepBody, finalize, step

BUILTIN = ("prune", "lowrank", "quantize", "lowbit", "train", "export", "evaluate")

for _name in BUILTIN:
    importlib.import_module(f"bitladder.pipeline.recipe.steps.{_name}")

from bitladder.pipeline.recipe.steps.evaluate import Evaluate  # noqa: E402  (re-exported for callers)
from bitladder.pipeline.recipe.steps.export import Export  # noqa: E402
from bitladder.pipeline.recipe.steps.lowrank import LowRankStep  # noqa: E402
from bitladder.pipeline.recipe.steps.quantize import Quantize  # noqa: E402

__all__ = ["STEPS", "BUILTIN", "Evaluate", "Export", "LowRankStep", "Quantize", "Selected", "State", "StepBody",
           "finalize", "step"]
