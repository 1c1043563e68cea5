"""Activation and weight quantisers for QAT, each forward value exactly what the packed module computes.

* :class:`LSQAct`: a learned step per layer (LSQ, Esser et al. 2020), initialised from the first batch
  (``2 mean|x| / sqrt(qmax)``); signed or unsigned by the sign of that batch. After conversion it becomes
  the layer's static activation quantiser (``QuantModule.set_act``).
* :func:`token_act`: BitNet b1.58's per-token absmax int8 activations (straight-through gradient).
* :func:`absmean_ternary`: BitNet b1.58's weights, ``clamp(round(w / mean|w|), -1, 1) * mean|w|`` per
  output channel, the scale rounded to its fp16 storage.

>>> import torch
>>> q = LSQAct(4)
>>> y = q(torch.rand(8, 3))
>>> q.qtype, bool(q.ready), int(((y / q.step).round() - y / q.step).abs().max() < 1e-4)
('uint4', True, 1)
"""

from __future__ import annotations

import torch
from torch import nn

from bitladder.formats.quant import fake_quant_per_token

TINY = 2.0**-24  # the smallest fp16 step: steps stored as fp16 never flush to zero


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value exactly ``q``, gradient of the identity to ``x`` (straight-through)."""
    return q.detach() + (x - x.detach())


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward value exactly ``x``, gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return x.detach() + (x - x.detach()) * g


class LSQAct(nn.Module):
    """Per-tensor activation fake-quantiser at ``bits`` with a learned step."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.step = nn.Parameter(torch.ones(()))
        # buffers, so that a training checkpoint records the initialisation and the chosen sign
        self.register_buffer("ready", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(True))

    @property
    def qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of the activation codes."""
        b = self.bits
        return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if bool(self.signed) else (0, 2**b - 1)

    @property
    def qtype(self) -> str:
        """The activation format's name."""
        return f"{'int' if bool(self.signed) else 'uint'}{self.bits}"

    def scale(self) -> torch.Tensor:
        """The step the packed module stores (and this quantiser applies)."""
        return self.step.detach().abs().clamp(min=TINY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            with torch.no_grad():
                self.signed.fill_(bool((x < 0).any()))
                self.step.copy_((2 * x.abs().mean() / self.qrange[1] ** 0.5).clamp(min=TINY))
                self.ready.fill_(True)
        qmin, qmax = self.qrange
        s = grad_scale(self.step.abs().clamp(min=TINY), 1.0 / (x.numel() * qmax) ** 0.5)
        v = torch.clamp(x / s, qmin, qmax)
        return ste(v, torch.round(v)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def token_act(x: torch.Tensor, channel_dim: int, bits: int = 8) -> torch.Tensor:
    """Per-token absmax activations (the same primitive the packed module runs), straight-through."""
    return ste(x, fake_quant_per_token(x.detach(), bits, channel_dim))


def absmean_scale(w: torch.Tensor) -> torch.Tensor:
    """mean|w| per output channel (axis 0), rounded to fp16 as it will be stored; shape (C,)."""
    s = w.detach().abs().reshape(w.shape[0], -1).mean(1).clamp(min=TINY)
    return s.half().float()


def absmean_ternary(w: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58 weights: ``w`` rounded to {-1, 0, 1} times its per-output-channel absmean, straight-through."""
    shape = [-1] + [1] * (w.dim() - 1)
    s = absmean_scale(w).reshape(shape)
    return ste(w, torch.clamp(torch.round(w.detach() / s), -1, 1) * s)
