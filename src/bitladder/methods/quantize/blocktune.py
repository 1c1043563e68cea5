"""Block-wise output reconstruction after quantisation (``Int(..., tune=Tune())``).

GPTQ, AWQ and RTN choose each layer's codes to match that layer's output; at 2-3 bits the errors of a
block's layers add up and the block drifts. Here every repeated block (a model without them: the whole
model) is trained as one, after its layers are quantised: the free values are each weight's rounding offset
``v`` (the code is ``clamp(code0 + round(v))``, so a code moves at most one grid step) and each scale group's
log-factor, updated by the sign of their gradient with a linearly decaying step (AutoRound, Cheng et al. 2023,
here started from the method's own codes rather than round-to-nearest). The loss is the mean squared error
of the block's output (padding rows left out) against the float block's output; the block is fed what the
already-tuned quantised blocks before it produce, so it also corrects their remaining error. A quarter of the
calibration samples is held out: each block keeps whichever of its states along training (the untrained one
included) has the lowest held-out loss, so tuning on a few sentences cannot make a block worse on data it
did not train on (measured: without this, 64 sentences took MiniLM W4 below plain GPTQ).

Integer and ternary layers with a scale and dense storage are trained; others in a block (float, codebook,
sparse) take part unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bitladder.errors import BitladderError
from bitladder.methods.quantize.calibrate import advance, as_calls, capture_inputs, find_blocks, first_output, row_mask
from bitladder.methods.quantize.methods import Tune
from bitladder.methods.quantize.swap import replace
from bitladder.methods.quantize.transforms import Pass, Transform, transform
from bitladder.nn.base import QuantModule
from bitladder.tensor.quantized import SCALE_DTYPES, QuantizedTensor

log = logging.getLogger("bitladder")
TRAINED_KINDS = ("int", "ternary")  # codes are plain integers in [qmin, qmax]
HOLDOUT = 4  # every 4th step of samples is held out to choose the state a block keeps
CHECKS = 4  # held-out measurements along the training of a block


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class _Trainable(nn.Module):
    """Stands in for one quantised layer while its block trains: the same function, computed from codes
    ``code0 + round(v)`` and scales ``scale0 * exp(a)`` (rounded to the storage dtype on the way)."""

    def __init__(self, q: QuantModule, bias: bool) -> None:
        super().__init__()
        qt = q.qweight
        self.q, self.qt = q, qt
        self.shell = q.to_float()  # the float layer: its forward with our weight is the layer's function
        for p in self.shell.parameters():
            p.requires_grad_(False)
        c, k, nb, b = qt.layout.dims(qt.shape)
        self.dims = (c, k, nb, b)
        self.register_buffer("code0", qt.codes().float())
        self.register_buffer("scale0", qt.scale.float().reshape(c, nb))
        zp = qt.zero_points()
        self.register_buffer("zp", torch.zeros(c, nb) if zp is None else zp.float())
        self.scale_dtype = qt.scale.dtype
        self.v = nn.Parameter(torch.zeros(c, k))
        self.a = nn.Parameter(torch.zeros(c, nb))
        b0 = getattr(q, "bias", None)
        self.bias = None if b0 is None else nn.Parameter(b0.detach().float().clone(), requires_grad=bias)
        self.in_scale = q.in_scale.float() if "in_scale" in q.qmeta else None

    def codes(self) -> torch.Tensor:
        return torch.clamp(self.code0 + _round_ste(self.v), self.qt.qtype.qmin, self.qt.qtype.qmax)

    def scales(self) -> torch.Tensor:
        s = self.scale0 * torch.exp(self.a)
        return s + (s.to(self.scale_dtype).float() - s).detach()  # what storage will hold

    def weight(self) -> torch.Tensor:
        # QuantizedTensor.dequantize's arithmetic, kept differentiable in the offsets and scale factors
        c, k, nb, b = self.dims
        q = nn.functional.pad(self.codes(), (0, nb * b - k)).reshape(c, nb, b)
        rows = ((q - self.zp.unsqueeze(-1)) * self.scales().unsqueeze(-1)).reshape(c, nb * b)[:, :k]
        w = self.qt.layout.unrows(rows, self.qt.shape)
        if self.in_scale is not None:
            shape = [1] * w.dim()
            shape[self.q.in_axis] = -1
            w = w * self.in_scale.reshape(shape)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {"weight": self.weight()}
        if self.bias is not None:
            params["bias"] = self.bias
        return functional_call(self.shell, params, (x,))

    @torch.no_grad()
    def commit(self) -> None:
        """Write the trained codes, scales and bias into the quantised layer (its kernels rebuilt)."""
        qt = self.qt
        name = next(n for n, d in SCALE_DTYPES.items() if d == self.scale_dtype)
        zp = qt.zero_points()
        if zp is not None and not qt.zero_point.is_floating_point():
            zp = zp.to(torch.int32)
        new = QuantizedTensor.from_codes(self.codes().to(torch.int32), self.scales(), zp, qt.qtype, qt.shape,
                                         qt.layout, name, qt.n_clipped)
        for part, t in new.tensors().items():
            setattr(self.q, f"weight_{part}", t)
        if self.bias is not None and self.bias.requires_grad:
            self.q.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        self.q.set_kernel_policy(self.q.kernel_policy)
        self.q._qmeta["tuned"] = True


def trainable(q: nn.Module) -> bool:
    """Whether block tuning trains this layer: integer/ternary codes with scales, dense, with a float form."""
    if not isinstance(q, QuantModule) or q.qmeta.get("act") is not None:
        return False
    qt = q.qweight
    if qt.qtype.kind not in TRAINED_KINDS or qt.scale is None or qt.table is not None or qt.mask is not None:
        return False
    return type(q).to_float is not QuantModule.to_float  # the stand-in runs the layer's float form


def _swap_in(block: nn.Module, bias: bool) -> dict[str, _Trainable]:
    """Replace the block's trainable layers by :class:`_Trainable` stand-ins; returns them by name."""
    out = {name: _Trainable(m, bias) for name, m in list(block.named_modules()) if name and trainable(m)}
    for name, t in out.items():
        replace(block, name, t)
    return out


def _swap_out(block: nn.Module, stand_ins: dict[str, _Trainable]) -> None:
    for name, t in stand_ins.items():
        replace(block, name, t.q)


def _loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (out.float() - target.float()).pow(2)
    if mask is not None and err.dim() == 3 and tuple(err.shape[:2]) == tuple(mask.shape):
        keep = mask.bool()
        return err[keep].mean()
    return err.mean()


def _split(calls: list, targets: list, masks: list, size: int) -> tuple[list, list, list]:
    """Calls of at most ``size`` samples: every tensor argument whose first dimension is the batch is sliced."""
    out: tuple[list, list, list] = ([], [], [])
    for (args, kwargs), t, m in zip(calls, targets, masks):
        n = t.shape[0]
        for lo in range(0, n, size):
            cut = (lambda v: v[lo:lo + size] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v)
            out[0].append((tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}))
            out[1].append(t[lo:lo + size])
            out[2].append(None if m is None else m[lo:lo + size])
    return out


def _run(block: nn.Module, call: tuple[tuple, dict]) -> torch.Tensor:
    return first_output(block(*call[0], **call[1]))


@torch.no_grad()
def _total(block: nn.Module, calls, targets, masks) -> float:
    return sum(float(_loss(_run(block, c), t, m)) for c, t, m in zip(calls, targets, masks)) / len(calls)


def tune_block(block: nn.Module, calls: list, targets: list[torch.Tensor], masks: list, cfg: Tune) -> dict:
    """Train ``block``'s quantised layers so ``block(call) ≈ target``.

    The calls are cut into steps of ``cfg.batch`` samples; every ``HOLDOUT``-th step (in a seeded shuffle) is
    held out and never trained on. The held-out loss is measured before training and at ``CHECKS`` points
    along it; the block keeps the best of these states (the untrained one included), so a small calibration
    set that the steps overfit costs nothing on data the block did not train on. Returns {"layers",
    "loss_before", "loss_after" (held-out), "best_step" (0: untouched), "held_out" (steps), "kept"}."""
    stand_ins = _swap_in(block, cfg.bias)
    if not stand_ins:
        return {"layers": 0, "loss_before": None, "loss_after": None, "best_step": 0, "held_out": 0, "kept": False}
    own = {id(p) for t in stand_ins.values() for p in t.parameters()}
    frozen = [p for p in block.parameters() if p.requires_grad and id(p) not in own]
    for p in frozen:
        p.requires_grad_(False)
    try:
        calls, targets, masks = _split(calls, targets, masks, cfg.batch)
        gen = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(calls), generator=gen).tolist()
        held = perm[::HOLDOUT] if len(perm) > 1 else []
        train = perm if not held else [i for k, i in enumerate(perm) if k % HOLDOUT]
        val = held or train

        def check() -> float:
            return _total(block, [calls[i] for i in val], [targets[i] for i in val], [masks[i] for i in val])

        before = best = check()
        best_step, best_state = 0, None
        points = {max(1, round(cfg.iters * k / CHECKS)) for k in range(1, CHECKS + 1)}
        limit = math.log(cfg.max_scale_change)
        params = [p for t in stand_ins.values() for p in t.parameters() if p.requires_grad]
        order: list[int] = []
        for step in range(cfg.iters):
            if not order:
                order = [train[j] for j in torch.randperm(len(train), generator=gen).tolist()]
            i = order.pop()
            loss = _loss(_run(block, calls[i]), targets[i], masks[i])
            for p in params:
                p.grad = None
            loss.backward()
            lr = cfg.step * (1 - step / cfg.iters)
            with torch.no_grad():
                for t in stand_ins.values():
                    t.v.sub_(lr * t.v.grad.sign()).clamp_(-1, 1)
                    t.a.sub_(lr * t.a.grad.sign()).clamp_(-limit, limit)
                    if t.bias is not None and t.bias.requires_grad and t.bias.grad is not None:
                        t.bias.sub_(lr * 0.01 * t.bias.abs().mean().clamp_min(1e-3) * t.bias.grad.sign())
            if step + 1 in points:
                now = check()
                if now < best:
                    best, best_step = now, step + 1
                    best_state = [[p.detach().clone() for p in t.parameters()] for t in stand_ins.values()]
        if best_state is not None:
            with torch.no_grad():
                for t, saved in zip(stand_ins.values(), best_state):
                    for p, v in zip(t.parameters(), saved):
                        p.copy_(v)
            for t in stand_ins.values():
                t.commit()
    finally:
        _swap_out(block, stand_ins)
        for p in frozen:
            p.requires_grad_(True)
    return {"layers": len(stand_ins), "loss_before": before, "loss_after": best, "best_step": best_step,
            "held_out": len(held), "kept": best_state is not None}


def tune_model(float_model: nn.Module, qmodel: nn.Module, calib: list[Any], cfg: Tune) -> list[dict]:
    """Tune every repeated block of ``qmodel`` (or the whole model) against ``float_model``; one report each."""
    blocks = find_blocks(qmodel)
    modes = (float_model.training, qmodel.training)
    float_model.eval()
    qmodel.eval()
    try:
        masks = [row_mask(b) for b in calib]
        if blocks:
            q_in = capture_inputs(qmodel, qmodel.get_submodule(blocks[0]), calib)
            f_in = capture_inputs(float_model, float_model.get_submodule(blocks[0]), calib)
        else:
            q_in = f_in = as_calls(calib)
        reports = []
        for name in blocks or [""]:
            fb, qb = float_model.get_submodule(name), qmodel.get_submodule(name)
            with torch.no_grad():
                targets = [_run(fb, c) for c in f_in]
            report = tune_block(qb, q_in, targets, masks, cfg)
            reports.append({"block": name or "(model)", **report})
            log.info("tune %s: %s", name or "model", report)
            if blocks:
                with torch.no_grad():
                    q_in = [advance(c, _run(qb, c)) for c in q_in]
                f_in = [advance(c, t) for c, t in zip(f_in, targets)]
        return reports
    finally:
        float_model.train(modes[0])
        qmodel.train(modes[1])


@transform("tune")
class BlockTune(Transform):
    """Keeps a float copy before quantisation (after rotations, before bias correction's copy) and tunes the
    quantised blocks against it before bias correction."""

    order, after_order = 25, 45

    @classmethod
    def wanted(cls, config) -> bool:
        return getattr(config, "tune", None) is not None

    def check(self, config, calib) -> None:
        if not calib:
            raise BitladderError("tune needs calibration data: pass calib=[batch, ...]")

    def before(self, p: Pass) -> None:
        p.state["tune_float"] = copy.deepcopy(p.model)

    def after(self, p: Pass) -> None:
        p.state["tune_report"] = tune_model(p.state.pop("tune_float"), p.model, list(p.calib), p.config.tune)
