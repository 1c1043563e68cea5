"""Per-layer sensitivity and mixed precision under an average bits-per-weight budget.

Sensitivity of layer L at rung R: quantise only L to R and measure the relative output error
``||f_q(x) - f(x)||^2 / ||f(x)||^2`` on calibration data (never the evaluation data), plus the
weight SQNR and the layer's exact bits per weight. The allocation starts every layer at its
highest-precision candidate and repeatedly takes the step down that adds the least error per bit
saved, until the parameter-weighted average meets the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.quant import sqnr_db
from bitladder.methods.quantize.api import plan, quantize
from bitladder.nn.select import run

log = logging.getLogger("bitladder")


@torch.inference_mode()
def _outputs(model: nn.Module, batches: Sequence[Any]) -> torch.Tensor:
    return torch.cat([run(model, b).float().flatten(1) for b in batches])


def sensitivity(model: nn.Module, candidates: dict[str, Any], batches: Sequence[Any],
                layers: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """{layer: {rung: {"divergence", "sqnr_db", "bits_per_weight", "numel"}}} for data-free configs."""
    if not batches:
        raise BitladderError("sensitivity needs calibration batches")
    ref = _outputs(model, batches)
    norm = float(ref.pow(2).sum()) or 1.0
    layers = layers or list(plan(model).targets)
    table: dict[str, dict[str, dict]] = {}
    for name in layers:
        w = model.get_submodule(name).weight.detach()
        table[name] = {}
        for rung, cfg in candidates.items():
            needs = cfg.needs_calibration
            q = quantize(model, cfg, include=[name], calib=list(batches) if needs else None)
            qm = q.get_submodule(name)
            table[name][rung] = {
                "divergence": float((_outputs(q, batches) - ref).pow(2).sum()) / norm,
                "sqnr_db": sqnr_db(w, qm.effective_weight()),
                "bits_per_weight": qm.qweight.bits_per_weight, "numel": qm.qweight.numel}
    return table


def allocate(table: dict[str, dict[str, dict]], budget_bits: float) -> dict[str, str]:
    """Choose a rung per layer meeting the parameter-weighted average ``budget_bits``."""
    if not table:
        raise BitladderError("no layers to allocate")
    order = {n: sorted(r, key=lambda k: -r[k]["bits_per_weight"]) for n, r in table.items()}
    pick = {n: 0 for n in table}
    numel = {n: next(iter(r.values()))["numel"] for n, r in table.items()}
    total = sum(numel.values())

    def avg() -> float:
        return sum(table[n][order[n][pick[n]]]["bits_per_weight"] * numel[n] for n in table) / total

    while avg() > budget_bits:
        best, best_cost = None, float("inf")
        for n in table:
            if pick[n] + 1 >= len(order[n]):
                continue
            cur, nxt = table[n][order[n][pick[n]]], table[n][order[n][pick[n] + 1]]
            saved = (cur["bits_per_weight"] - nxt["bits_per_weight"]) * numel[n]
            if saved <= 0:
                continue
            cost = max(nxt["divergence"] - cur["divergence"], 0.0) / saved
            if cost < best_cost:
                best, best_cost = n, cost
        if best is None:
            lowest = sum(table[n][order[n][-1]]["bits_per_weight"] * numel[n] for n in table) / total
            raise BitladderError(f"budget of {budget_bits} bits per weight cannot be met with these candidates; "
                                 f"the lowest reachable is {lowest:.3f}")
        pick[best] += 1
    return {n: order[n][pick[n]] for n in table}


def apply_assignment(model: nn.Module, assignment: dict[str, str], candidates: dict[str, Any],
                     calib: Sequence[Any] | None = None) -> nn.Module:
    """Quantise each layer to its assigned rung (one pass per distinct rung)."""
    import copy

    model = copy.deepcopy(model)
    for rung in dict.fromkeys(assignment.values()):
        names = [n for n, r in assignment.items() if r == rung]
        quantize(model, candidates[rung], include=names, calib=calib, inplace=True)
    return model
