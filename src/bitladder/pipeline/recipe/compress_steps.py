"""What each recipe step does to the pipeline's state (the current model, the float teacher, the
structure record for the artifact). One function per step kind, registered in ``RUNNERS``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo.spec import ModelSpec

log = logging.getLogger("bitladder")


@dataclass
class State:
    """What the recipe steps share: the spec, the current model, its structure record, configs and notes."""
    spec: ModelSpec
    model: nn.Module
    structure: list[dict] | None = None  # recorded when the model stops being float (quantize / lowbit)
    configs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def freeze_structure(self) -> None:
        """Record the current model's structure against a fresh float model, the first time only."""
        if self.structure is None:
            from bitladder.io.structure import describe

            self.structure = describe(self.model, self.spec.fresh_model())


def _prune(st: State, body) -> None:
    cfg = body.config()
    if body.method == "channels":
        from bitladder.methods.prune.structured import prune_channels

        spec = st.spec
        example = spec.train_batches[0] if spec.train_batches else spec.calib_batches[0]
        if isinstance(example, dict):
            raise BitladderError("channel pruning traces a model called on one tensor; this model takes keyword "
                                 "inputs (use method: magnitude or nm)")
        target = spec.train_targets[0] if spec.train_targets else None
        st.model, report = prune_channels(st.model, cfg, example, target=target)
        if report.get("skipped"):
            st.notes.append("not pruned: " + "; ".join(f"{n} ({why})" for n, why in report["skipped"].items()))
    else:
        from bitladder.methods.prune.magnitude import prune

        st.model = prune(st.model, cfg, include=body.include, exclude=body.exclude)
    st.configs.append(cfg.to_dict() if hasattr(cfg, "to_dict") else {"type": type(cfg).__name__, **vars(cfg)})


def _lowrank(st: State, body) -> None:
    from bitladder.methods.lowrank.conv import factorize_convs
    from bitladder.methods.lowrank.svd import factorize

    cfg = body.config()
    if body.conv != "none":
        st.model = factorize_convs(st.model, cfg, include=body.include, exclude=body.exclude)
        st.configs.append(cfg.to_dict())
        return
    calib = st.spec.calib_batches if body.data_aware is not False else None
    if body.data_aware and not calib:
        raise BitladderError(f"lowrank data_aware: model {st.spec.name!r} has no calibration data "
                             "(data_aware: false factors the weights alone)")
    st.model = factorize(st.model, cfg, include=body.include, exclude=body.exclude, calib=calib or None)
    st.configs.append({**cfg.to_dict(), "data_aware": bool(calib)})


def _quantize(st: State, body) -> None:
    from bitladder.methods.quantize.api import quantize

    cfg = body.config()
    st.freeze_structure()
    needs = any(getattr(getattr(cfg, k, None), "needs_data", False) for k in ("method", "act"))
    if needs and not st.spec.calib_batches:
        raise BitladderError(f"rung {body.rung!r} needs calibration data and model {st.spec.name!r} has none")
    st.model = quantize(st.model, cfg, include=body.include, exclude=body.exclude,
                        calib=st.spec.calib_batches if needs else None)
    st.configs.append({"rung": body.rung, **cfg.to_dict()})


def _lowbit(st: State, body) -> None:
    from bitladder.methods.train.qat import prepare_qat

    cfg = body.config()
    st.freeze_structure()
    st.model = prepare_qat(st.model, cfg, include=body.include, exclude=body.exclude)
    st.configs.append({"type": "QAT", "bits": cfg.bits, "binary_act": cfg.binary_act,
                       "keep_first_last": cfg.keep_first_last})


def _train(st: State, body, teacher: nn.Module | None) -> None:
    from bitladder.methods.train.trainer import fit

    spec = st.spec
    if not spec.train_batches:
        raise BitladderError(f"model {spec.name!r} has no training data for a {type(body).__name__.lower()} step")
    if teacher is None and spec.train_targets is None:
        raise BitladderError(f"finetune needs labels and model {spec.name!r} has none; use distill (the float "
                             "model as teacher)")
    fit(st.model, spec.train_batches, spec.train_targets, body.config(), teacher=teacher, metric=spec.metric)


def _finetune(st: State, body) -> None:
    _train(st, body, None)


def _distill(st: State, body) -> None:
    _train(st, body, st.spec.model)


def finalize(st: State) -> nn.Module:
    """Convert quantisation-aware layers to packed ones; the model as it will be saved."""
    from bitladder.methods.train.qat import FakeQuantLayer, convert

    if any(isinstance(m, FakeQuantLayer) for m in st.model.modules()):
        st.model = convert(st.model)
    st.freeze_structure()
    return st.model.eval()


RUNNERS: dict[str, Any] = {"prune": _prune, "lowrank": _lowrank, "quantize": _quantize, "lowbit": _lowbit,
                           "finetune": _finetune, "distill": _distill}
