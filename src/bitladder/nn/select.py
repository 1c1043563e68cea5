"""Calling a model on a batch and choosing layers by name: the helpers every method shares.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(2, 2))
>>> selected("0", m[0], ["0"], None), selected("0", m[0], None, lambda n, mod: True)
(True, False)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

#: glob patterns over module names (``"encoder.*.query"``) or a function ``(name, module) -> bool``
Selector = Sequence[str] | Callable[[str, nn.Module], bool] | None


def run(model: nn.Module, batch: Any) -> torch.Tensor:
    """Call a model on one batch: a tensor positionally, a dict as keywords."""
    return model(**batch) if isinstance(batch, dict) else model(batch)


def selected(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    """Whether ``include`` picks the layer (everything when None) and ``exclude`` does not."""
    def match(sel: Selector) -> bool:
        if callable(sel):
            return bool(sel(name, module))
        return any(fnmatch.fnmatchcase(name, p) for p in sel)

    if include is not None and not match(include):
        return False
    return not (exclude is not None and match(exclude))
