"""The built-in splitters: one registry, built per call (no global state), that a caller may extend."""

from __future__ import annotations

from bitladder.pipeline.parallel.blocks import SplitterRegistry
from bitladder.pipeline.parallel.llama import register as register_llama


def default_registry() -> SplitterRegistry:
    """A registry of the built-in splitters (Llama-family causal LMs)."""
    reg = SplitterRegistry()
    register_llama(reg)
    return reg
