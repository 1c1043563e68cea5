"""``bitladder tune``: an Optuna search over the compression space under a fidelity-drop budget.

Each trial picks a format per layer (fp16 down to binary; GPTQ-calibrated at 2-3 bits), a global
magnitude sparsity and a low-rank energy for Linear layers, compresses a copy of the model and scores
it on the *search* half of the evaluation data. The first trials are the ladder itself (every layer at
one format) and greedy mixed-precision assignments from per-layer sensitivity at a few budgets, so TPE
starts from good answers and looks for better mixes; a proposal already measured is not recomputed. The objective is the smallest size (average bits per
original weight, every stored tensor of the compressed layers counted) or the lowest latency, with
the constraint ``fidelity drop <= max_drop`` handed to TPE as a constraint. The best feasible trial is
rebuilt, saved as an artifact and measured on the *held-out* half as well, so the reported drop is not
the one the search optimised.

The study lives in a database (SQLite file by default, any SQLAlchemy URL such as PostgreSQL for
workers on many machines); heartbeats mark trials of a killed process as failed and they are retried,
so a study resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.quantize.api import plan, quantize
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.ladder.rungs import parse_rungs
from bitladder.zoo.spec import ModelSpec

FORMATS = ("fp16", "int8", "int4-g64", "int3-g128-asym-gptq", "int2-g128-asym-gptq", "ternary", "binary")
SPARSITY = (0.0, 0.25, 0.5)
ENERGY = (1.0, 0.98, 0.95)
OBJECTIVES = ("size", "latency")
ROW_KEYS = ("fidelity", "fidelity_drop_pt", "bits_per_weight", "model_bytes", "latency_ms", "latency_ratio")


@dataclass(frozen=True)
class TuneConfig:
    """The search: fidelity-drop budget in points, objective, trial count and the choices per dimension."""
    max_drop: float = 1.0  # fidelity points (accuracy %, or cosine x 100)
    objective: str = "size"
    trials: int = 60
    formats: tuple[str, ...] = FORMATS
    sparsity: tuple[float, ...] = SPARSITY
    energy: tuple[float, ...] = ENERGY
    seed: int = 0
    repeats: int = 3  # latency runs per trial

    @cached_property
    def configs(self) -> dict:
        """``formats`` parsed to quantisation configs."""
        return parse_rungs(self.formats)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise BitladderError(f"unknown objective {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if not self.max_drop >= 0:
            raise BitladderError(f"max-drop must be >= 0 fidelity points, got {self.max_drop}")
        if self.trials < 1:
            raise BitladderError(f"trials must be >= 1, got {self.trials}")
        self.configs  # noqa: B018 - parsed once, here: a bad rung fails before any work
        if any(not 0 <= s < 1 for s in self.sparsity):
            raise BitladderError(f"sparsity choices must be in [0, 1), got {self.sparsity}")
        if any(not 0 < e <= 1 for e in self.energy):
            raise BitladderError(f"energy choices must be in (0, 1], got {self.energy}")


def for_model(config: TuneConfig, spec: ModelSpec) -> TuneConfig:
    """``config`` without the formats ``spec`` cannot build: calibrated ones (GPTQ, static activations) where the
    model brings no calibration data, which would otherwise fail every trial that picks them."""
    if spec.calib_batches:
        return config
    keep = tuple(f for f, c in config.configs.items() if not c.needs_calibration)
    if not keep:
        raise BitladderError(f"model {spec.name!r} has no calibration data and every format needs it: "
                             f"{', '.join(config.formats)}")
    return config if keep == config.formats else dataclasses.replace(config, formats=keep)


def split_eval(spec: ModelSpec) -> tuple[ModelSpec, ModelSpec]:
    """(search half, held-out half) of the evaluation data, by batch or, for one batch, by row."""
    b = spec.eval_batches
    if len(b) >= 2:
        halves = [b[: len(b) // 2], b[len(b) // 2 :]]
        n = sum(len(x) if isinstance(x, torch.Tensor) else len(x["input_ids"]) for x in halves[0])
        tg = None if spec.targets is None else [spec.targets[:n], spec.targets[n:]]
    else:
        x = b[0]
        rows = len(x) if isinstance(x, torch.Tensor) else len(x["input_ids"])
        cut = rows // 2
        take = (lambda s: x[s]) if isinstance(x, torch.Tensor) else (lambda s: {k: v[s] for k, v in x.items()})
        halves = [[take(slice(0, cut))], [take(slice(cut, rows))]]
        tg = None if spec.targets is None else [spec.targets[:cut], spec.targets[cut:]]
    return tuple(dataclasses.replace(spec, eval_batches=h, targets=None if tg is None else tg[i])
                 for i, h in enumerate(halves))


def layers_of(model: nn.Module) -> list[str]:
    """Names of the layers the search gives a format each."""
    return list(plan(model).targets)


def _weight_numel(model: nn.Module, names: list[str]) -> int:
    return sum(model.get_submodule(n).weight.numel() for n in names)


def compressed_bits(model: nn.Module, names: list[str], numel: int) -> tuple[float, int]:
    """(bits per original weight, bytes) over every stored tensor of the named layers (and their factors)."""
    total = 0
    for name, m in model.named_modules():
        if not any(name == n or name.startswith(n + ".") for n in names):
            continue
        if isinstance(m, QuantModule):
            total += m.qweight.nbytes
        elif isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding):
            total += m.weight.numel() * m.weight.element_size()
    return 8 * total / max(numel, 1), total


def reshape(spec: ModelSpec, params: dict[str, Any], names: list[str]) -> nn.Module:
    """A float copy with the trial's low-rank factorisation and magnitude sparsity applied."""
    from bitladder.methods.lowrank.svd import LowRank, factorize
    from bitladder.methods.prune.configs import Magnitude
    from bitladder.methods.prune.magnitude import prune

    model = copy.deepcopy(spec.model)
    energy = params.get("energy", 1.0)
    if energy < 1.0:
        lin = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
        model = factorize(model, LowRank(energy=energy), include=lin)
    if params.get("sparsity", 0.0) > 0:
        model = prune(model, Magnitude(sparsity=params["sparsity"]))
    return model


def build(spec: ModelSpec, params: dict[str, Any], names: list[str], configs: dict | None = None) -> nn.Module:
    """Compress a copy of the float model: low-rank, then sparsity, then a format per layer (``configs``: the
    trial's rung names already parsed; else they are parsed from ``params``, as read back from a study)."""
    model = reshape(spec, params, names)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(params[f"fmt:{n}"], []).extend([n, f"{n}.*"])
    for fmt in sorted(groups, key=lambda f: "gptq" in f):  # data-free first, calibrated last
        cfg = configs[fmt] if configs else parse_rungs([fmt])[fmt]
        needs = getattr(getattr(cfg, "method", None), "needs_data", False)
        model = quantize(model, cfg, include=groups[fmt], calib=spec.calib_batches if needs else None)
    return model.eval()


def score(spec: ModelSpec, model: nn.Module, ref: torch.Tensor, base: float, names: list[str], numel: int,
          repeats: int) -> dict:
    """A trial's row: fidelity and its drop in points, bits per weight, bytes, latency in ms and ratio to fp32."""
    fid = fidelity(spec, outputs(model, spec.eval_batches), ref)
    bits, nbytes = compressed_bits(model, names, numel)
    fp32_s, got_s = paired_latency(spec.model, model, spec.latency_batch, repeats, warmup=1)
    return {"fidelity": fid["fidelity"], "fidelity_drop_pt": 100 * (base - fid["fidelity"]),
            "bits_per_weight": bits, "model_bytes": nbytes, "latency_ms": 1e3 * got_s,
            "latency_ratio": fp32_s / got_s}


def suggest(trial, config: TuneConfig, names: list[str]) -> dict[str, Any]:
    """Ask ``trial`` for a format per layer and, where there is a choice, the sparsity and low-rank energy."""
    p: dict[str, Any] = {f"fmt:{n}": trial.suggest_categorical(f"fmt:{n}", list(config.formats)) for n in names}
    if len(config.sparsity) > 1:
        p["sparsity"] = trial.suggest_categorical("sparsity", list(config.sparsity))
    if len(config.energy) > 1:
        p["energy"] = trial.suggest_categorical("energy", list(config.energy))
    return p


def warm_start(config: TuneConfig, names: list[str]) -> list[dict[str, Any]]:
    """The ladder as first trials: every layer at one format, no sparsity, no factorisation."""
    extra = {**({"sparsity": 0.0} if len(config.sparsity) > 1 else {}),
             **({"energy": 1.0} if len(config.energy) > 1 else {})}
    return [{**{f"fmt:{n}": f for n in names}, **extra} for f in config.formats]


GUIDED_BUDGETS = (2.0, 2.25, 2.5, 3.0, 4.0)
GUIDED_MAX_RUNS = 200  # layer x format quantisations the sensitivity pass may take


def guided_start(spec: ModelSpec, config: TuneConfig, names: list[str]) -> tuple[list[dict[str, Any]], dict]:
    """Greedy mixed-precision assignments (per-layer sensitivity, cheapest error per saved bit) at a few
    budgets: good first guesses that TPE then refines; and the sensitivity table. Skipped ([], {}) for
    models with many layers."""
    from bitladder.methods.quantize.mixed import allocate, sensitivity

    if len(names) * len(config.formats) > GUIDED_MAX_RUNS or not spec.calib_batches:
        return [], {}
    table = sensitivity(spec.model, config.configs, spec.calib_batches[:1], names)
    extra = {**({"sparsity": 0.0} if len(config.sparsity) > 1 else {}),
             **({"energy": 1.0} if len(config.energy) > 1 else {})}
    out = []
    for budget in GUIDED_BUDGETS:
        try:
            pick = allocate(table, budget)
        except BitladderError:
            continue
        params = {**{f"fmt:{n}": pick[n] for n in names}, **extra}
        if params not in out:
            out.append(params)
    return out, table


def objective_value(row: dict, config: TuneConfig) -> float:
    """The value to minimise: bits per weight (objective size) or latency in ms."""
    return row["bits_per_weight"] if config.objective == "size" else row["latency_ms"]


def worker_label() -> str:
    """This process's label in the trial records (its pid)."""
    return f"pid {os.getpid()}"
