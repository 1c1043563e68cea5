"""Input statistics for data-aware low-rank factors: ``X^T X`` of each selected Linear's input rows.

With ``X^T X = L L^T`` (Cholesky), the truncated SVD of ``W L`` gives the rank-r factors that minimise
the error of the layer's *outputs* on those inputs, ``||X (W - W_r)^T||``, rather than of its weight
(data-aware SVD as in SVD-LLM, Wang et al. 2024). Padding rows of tokenised batches are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.quantize.calibrate import layer_rows, row_mask


@torch.no_grad()
def input_grams(model: nn.Module, names: list[str], calib: list[Any]) -> dict[str, torch.Tensor]:
    """``X^T X`` (float64) of the rows each layer in ``names`` receives over the batches ``calib``."""
    grams: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(name: str):
        def pre(module, args):
            x = layer_rows(module, args[0]).double()
            m = state["mask"]
            if m is not None and args[0].dim() == 3 and tuple(args[0].shape[:2]) == tuple(m.shape):
                x = x[m.reshape(-1).bool()]
            grams[name] = grams.get(name, 0) + x.T @ x
        return pre

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for i, batch in enumerate(calib):
            state["mask"] = row_mask(batch)
            try:
                model(**batch) if isinstance(batch, dict) else model(batch)
            except Exception as e:
                raise BitladderError(f"calibration batch {i} does not fit the model: {e}") from None
    finally:
        for h in hooks:
            h.remove()
    return grams


def cholesky_factor(gram: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = gram + damping`` (a little of the mean diagonal, so unused inputs stay solvable)."""
    eye = torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.cholesky(gram + 1e-6 * gram.diagonal().mean().clamp(min=1e-12) * eye)
