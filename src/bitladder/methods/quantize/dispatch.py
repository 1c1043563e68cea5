"""Calibrated methods, keyed by their config type: collect per layer, then build the weight."""

from __future__ import annotations

from typing import Any

from torch import nn

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.methods.quantize.adaround import adaround_rows
from bitladder.methods.quantize.awq import awq_tensor, awq_tensors
from bitladder.methods.quantize.calibrate import SampleCollector, blockwise
from bitladder.methods.quantize.fold import apply_fold, can_fold, fold_plan
from bitladder.methods.quantize.gptq import HessianCollector, gptq_rows
from bitladder.methods.quantize.methods import AWQ, GPTQ, AdaRound
from bitladder.methods.quantize.swap import replace, swap
from bitladder.nn.records import is_conv1d
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor


CALIBRATED: dict[type, tuple] = {}  # method config type -> (collector factory, weight builder)


def calibrated(method_type: type, collector):
    """Register the weight builder of a calibrated method: ``collector(module)`` gathers what it needs per
    layer during the block-by-block pass, the builder turns the layer and its collector into a weight."""

    def register(build):
        CALIBRATED[method_type] = (collector, build)
        return build

    return register


@calibrated(GPTQ, lambda module: HessianCollector(_in_features(module)))
def _gptq(config, method: GPTQ, module: nn.Module, handler: type, collector: HessianCollector) -> QuantizedTensor:
    layout = config.layout(handler.weight_axis)
    by_channel = Layout("channel", handler.weight_axis)  # GPTQ sweeps (out, in) rows whatever the scales
    w = module.weight.detach().float()
    qtype = get_qtype(config.qtype)
    inv = collector.inverse(method.damp, method.act_order)  # once for the layers sharing the collector
    codes, scale, zp = gptq_rows(by_channel.rows(w), inv, qtype, layout, config.symmetric,
                                 SCALE_DTYPES[config.scale_dtype], method.damp, method.act_order,
                                 method.block_size, method.clip_search)
    codes = layout.rows(by_channel.unrows(codes, tuple(w.shape)))
    return QuantizedTensor.from_codes(codes, scale, zp, qtype, tuple(w.shape), layout, config.scale_dtype)


@calibrated(AWQ, lambda module: SampleCollector())
def _awq(config, method: AWQ, module: nn.Module, handler: type, collector: SampleCollector):
    if getattr(handler, "in_channel_dim", -1) != -1:  # convolutions: inputs are not per weight column
        return None
    return awq_tensor(module.weight.detach(), handler.weight_axis, collector, config, method)


@calibrated(AdaRound, lambda module: SampleCollector(keep=4096))
def _adaround(config, method: AdaRound, module: nn.Module, handler: type, collector: SampleCollector):
    layout = config.layout(handler.weight_axis)
    by_channel = Layout("channel", handler.weight_axis)
    w = module.weight.detach().float()
    qtype = get_qtype(config.qtype)
    codes, scale, zp = adaround_rows(by_channel.rows(w), collector.sample(), qtype, layout, config.symmetric,
                                     SCALE_DTYPES[config.scale_dtype], method.iters, method.lr, method.reg,
                                     method.batch)
    codes = layout.rows(by_channel.unrows(codes, tuple(w.shape)))
    return QuantizedTensor.from_codes(codes, scale, zp, qtype, tuple(w.shape), layout, config.scale_dtype)


def _in_features(module: nn.Module) -> int:
    w = module.weight
    if is_conv1d(module):  # transformers' Conv1D: weight (in, out)
        return w.shape[0]
    return w[0].numel()


def calibrated_swap(model: nn.Module, names: list[str], targets: dict[str, type], config, method,
                    calib: list[Any]) -> list[str]:
    """Quantise ``names`` with the calibrated ``method`` block by block; returns the layers it left alone."""
    make, apply, settle = calibrated_apply(model, targets, config, method)
    try:
        return blockwise(model, names, calib, make, apply, group=True)
    finally:
        settle()


def calibrated_apply(model: nn.Module, targets: dict[str, type], config, method):
    """``(make, apply, settle)`` for :func:`~bitladder.methods.quantize.calibrate.blockwise` in group mode: a
    collector per layer, and the swap of each group of layers reading one tensor (named in ``model``) for their
    quantised counterparts once their inputs are collected.

    Until ``settle()``, the new layers compute on the reference path (dequantise + fp32): the later groups'
    statistics then do not depend on the host's kernels (int8 activations at few rows, ISA-specific paths),
    and no kernel (numba compile, onnxruntime session) is built for a pass that runs a few times.
    ``settle()`` gives them the config's kernel policy."""
    make_collector, build = CALIBRATED[type(method)]
    plan = fold_plan(model) if isinstance(method, AWQ) and method.fold else {}
    created: list[nn.Module] = []

    def place(name: str, new: nn.Module | None) -> None:
        if new is not None and "kernel_policy" in type(new).__dict__:
            new.set_kernel_policy("dequant-fp32")
            created.append(new)
        replace(model, name, new)

    def one(name: str, module: nn.Module, collector) -> None:
        built = build(config, method, module, targets[name], collector)
        if built is None:  # the method does not apply to this layer: round to nearest
            place(name, swap(module, config, targets[name], name))
            return
        qt, in_scale = built if isinstance(built, tuple) else (built, None)
        new = swap(module, config, targets[name], name, qt=qt, method_name=method.name)
        if new is not None and in_scale is not None:  # on top of SmoothQuant's where the swap set one
            new.set_in_scale(in_scale * new.in_scale if "in_scale" in new.qmeta else in_scale)
        place(name, new)

    def apply(group: list) -> None:
        news = _folded(model, plan, targets, config, method, group)
        if news is not None:
            for (name, _, _), new in zip(group, news):
                place(name, new)
            return
        for name, module, collector in group:
            one(name, module, collector)

    def settle() -> None:
        policy = getattr(config, "kernel", "auto")
        for m in created:
            m.set_kernel_policy(policy)
        created.clear()

    return (lambda n, m: make_collector(m)), apply, settle


def _folded(model: nn.Module, plan: dict, targets: dict[str, type], config, method, group: list) -> list | None:
    """AWQ with one scale for the whole group, folded into the layer that produces its input (:mod:`.fold`):
    the group's quantised layers, or None (nothing done) where the group is not exactly the consumers of one
    registered producer."""
    fold = plan.get(group[0][0])
    names = [n for n, _, _ in group]
    if fold is None or sorted(names) != sorted(fold.consumers) or not can_fold(model, fold):
        return None
    handlers = [targets[n] for n in names]
    if any(h.weight_axis != 0 or getattr(h, "in_channel_dim", -1) != -1 for h in handlers):
        return None
    qts, in_scale = awq_tensors([m.weight.detach() for _, m, _ in group], 0, group[0][2], config, method, fold.tie)
    news = [swap(m, config, h, n, qt=qt, method_name=method.name) for (n, m, _), h, qt in zip(group, handlers, qts)]
    if any(new is None for new in news):
        return None
    apply_fold(model, fold, in_scale)
    return news
