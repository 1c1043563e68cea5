"""Built-in handlers: Linear, Conv1d, Conv2d, Embedding, and transformers' Conv1D."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from bitladder.kernels.base import KernelUnsupported, as_x
from bitladder.kernels.c_lowbit import RowGather
from bitladder.nn.base import QuantModule, eager
from bitladder.nn.outliers import OutlierLinear, add_side, side_weight
from bitladder.nn.registry import HANDLERS
from bitladder.tensor.quantized import QuantizedTensor

log = logging.getLogger("bitladder")


@HANDLERS.register(nn.Linear)
class QuantLinear(QuantModule):
    """Linear. With a kernel policy other than dequant-fp32, calls run on a low-bit kernel chosen by
    format and row count (:func:`bitladder.kernels.select.choose`); ``kernel`` names the last one used."""

    kernel_policy = "auto"

    def to_float(self) -> nn.Linear:
        n, k = self.qweight.shape
        if "outliers" in self._qmeta:  # the integer path's weight (zero on the outlier columns) and the float one
            w = self.qweight.dequantize(torch.float32) * self.in_scale
            twin = OutlierLinear(k, n, self.bias is not None, self.act_outliers, side_weight(self))
            with torch.no_grad():
                twin.weight.copy_(w)
                if self.bias is not None:
                    twin.bias.copy_(self.bias)
            return twin
        return self._filled(nn.Linear(k, n, bias=self.bias is not None))

    @eager
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # per-call Python is kept lean (no dtype casts that change nothing, no Module.__setattr__): MiniLM
        # on 8 tokens spends more in it than in the GEMMs
        xin = x if x.dtype == self.compute_dtype else x.to(self.compute_dtype)
        kern = self._kernel_for(xin.numel() // max(xin.shape[-1], 1), binary_rows=x.dim() == 2)
        if kern is None:
            self.__dict__["kernel"] = self._dequant_label
            y = F.linear(self.prepare_input(xin), self.weight(), self._bias())
            return (add_side(self, xin, y) if "outliers" in self._qmeta else y).to(x.dtype)
        self.__dict__["kernel"] = kern.name
        if "act_shift" in self._buffers:  # a trained binary layer: sign(x - shift) against the weights' sign bits
            return kern((xin - self.act_shift).contiguous(), self.bias).to(x.dtype)
        in_scale = self.in_scale if "in_scale" in self._qmeta else None  # no activation quantisation here
        x2 = xin.reshape(-1, xin.shape[-1])
        side = "outliers" in self._qmeta
        if hasattr(kern, "prepare") and x2.shape[0] > 0:
            prep = _shared_input(xin, kern, x2, in_scale)
            if side and getattr(kern, "adds_side", False):  # the float channels in the GEMM's epilogue
                y, side = kern.finish(prep, self.bias, (self.act_outliers, side_weight(self), x2)), False
            else:
                y = kern.finish(prep, self.bias)
        else:
            y = kern(x2, self.bias, in_scale)
        if side:
            y = add_side(self, x2, y, inplace=True)  # the kernel's fresh (M, N) output
        y = y.reshape(*xin.shape[:-1], y.shape[-1])  # -1 is ambiguous for an empty batch
        return y if y.dtype == x.dtype else y.to(x.dtype)


    def forward_rotated(self, x: torch.Tensor, block: int) -> torch.Tensor | None:
        """``self(x @ H)`` (``H`` block-Hadamard, :mod:`bitladder.nn.rotated`) where this call's kernel rotates
        and quantises its input in one pass (float32 ``x``, no input scale); None where it does not."""
        rows = x.numel() // max(x.shape[-1], 1)
        if x.dtype != torch.float32 or "in_scale" in self._qmeta or rows == 0:
            return None
        kern = self._kernel_for(rows, binary_rows=x.dim() == 2)
        if kern is None or not getattr(kern, "rotates", False):
            return None
        self.__dict__["kernel"] = kern.name
        y = kern.finish(_shared_input(x, kern, x.reshape(-1, x.shape[-1]), None, block), self.bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _shared_input(x: torch.Tensor, kern, x2: torch.Tensor, in_scale: torch.Tensor | None, block: int = 0):
    """The kernel's quantised input, shared by layers that read the same tensor with an equal input scale
    (attention's q, k, v under one SmoothQuant scale): kept on the tensor itself, keyed by its version.
    ``block``: the input is first rotated by a block-Hadamard of that size (:meth:`QuantLinear.forward_rotated`).

    Inference tensors have no version counter, so under ``torch.inference_mode`` an in-place change
    between two such reads would go unseen; a model that works with autograd cannot make one (the first
    layer saved that input for its backward).

    A kernel's ``prepare`` must hold nothing of ``x`` (nor a view of it): kept on ``x``, a reference back is a cycle
    through a tensor's attributes that Python's collector cannot see, and every input leaks (checked for every
    kernel, CPU profile and grad mode by tests/nn/test_kernels_in_layers.py)."""
    # levels: two layers on one kernel can differ in grid steps (7-bit weights take 255 where 8-bit take 127)
    key = (-1 if x.is_inference() else x._version, kern.name, x2.shape, getattr(kern, "_grid", None),
           getattr(kern, "levels", None), block)
    cached = getattr(x, "_bitladder_prep", None)
    if cached is not None and cached[0] == key and (
            (cached[1] is None and in_scale is None)
            or (cached[1] is not None and in_scale is not None and torch.equal(cached[1], in_scale))):
        return cached[2]
    prep = kern.prepare_rotated(x2, block) if block else kern.prepare(as_x(x2, kern.k), in_scale)
    x._bitladder_prep = (key, in_scale, prep)
    return prep


@HANDLERS.register("transformers.pytorch_utils.Conv1D")
class QuantHFConv1D(QuantModule):
    """transformers' GPT-2 style Conv1D: weight (in, out), so the output channel is axis 1."""

    weight_axis = 1
    in_axis = 0

    @eager
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prepare_input(x.to(self.compute_dtype)) @ self.weight()
        return (y if self.bias is None else y + self._bias()).to(x.dtype)


class _QuantConvNd(QuantModule):
    _conv = staticmethod(F.conv2d)
    in_channel_dim = 1

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QuantizedTensor):
        if module.padding_mode != "zeros":
            return None  # reported as skipped: only zero padding is handled
        qm = super().from_float(module, qweight)
        qm.stride, qm.padding, qm.dilation, qm.groups = module.stride, module.padding, module.dilation, module.groups
        qm.kernel_size = module.kernel_size
        w = module.weight
        if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
            qm._qmeta["memory_format"] = "channels_last"  # the float model ran channels-last: so does this layer
        return qm

    @classmethod
    def skeleton(cls, module: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> "_QuantConvNd":
        qm = super().skeleton(module, meta, tensors)
        if meta.get("memory_format") == "channels_last":
            qm._qmeta["memory_format"] = "channels_last"
        return qm

    @property
    def channels_last(self) -> bool:
        """Whether the float layer's weight was channels-last: ``F.conv2d`` then gives channels-last outputs, and
        so does this layer (a channels-last CNN runs its pooling and activations in that layout: docs/DESIGN.md)."""
        return self._qmeta.get("memory_format") == "channels_last"

    def weight(self) -> torch.Tensor:
        w = super().weight()
        return w.contiguous(memory_format=torch.channels_last) if self.channels_last else w

    def to_float(self) -> nn.Module:
        shape = self.qweight.shape
        return self._filled(self.float_cls(shape[1] * self.groups, shape[0], self.kernel_size, self.stride,
                                           self.padding, self.dilation, self.groups, bias=self.bias is not None))

    @eager
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.to(self.compute_dtype)
        kern = self._conv_kernel(xc)
        if kern is not None:
            self.__dict__["kernel"] = kern.name
            # a static integer kernel quantises on the layer's own grid: the simulated rounding would be done twice
            xin = self.scale_input(xc) if getattr(kern, "quantises_input", False) else self.prepare_input(xc)
            return kern(xin, self.bias).to(x.dtype)
        xin = self.prepare_input(xc)
        self.__dict__["kernel"] = self._dequant_label
        y = self._conv(xin, self.weight(), self._bias(), self.stride, self.padding, self.dilation, self.groups)
        return y.to(x.dtype)

    def _conv_kernel(self, x: torch.Tensor):
        return None


@HANDLERS.register(nn.Conv1d)
class QuantConv1d(_QuantConvNd):
    """Conv1d on the dequantised weight (zero padding only)."""
    _conv = staticmethod(F.conv1d)
    float_cls = nn.Conv1d


@HANDLERS.register(nn.Conv2d)
class QuantConv2d(_QuantConvNd):
    """Conv2d on a registered convolution kernel (:func:`bitladder.kernels.select.choose_conv`): under a dynamic
    W8A8 policy (``Act(dynamic=...)`` sets it) oneDNN's integer convolution with one activation scale per call
    (:mod:`bitladder.kernels.onednn_conv`); with a static activation grid, the same convolution on the layer's
    calibrated grid where the CPU takes all its codes (:mod:`bitladder.kernels.static_conv`); weight-only under
    auto, the float convolution on a weight dequantised in one pass from bit planes
    (:mod:`bitladder.kernels.dequant_conv`), or cast from a float format (:mod:`bitladder.kernels.cast_conv`).
    Where none runs (grouped or string padding in int8, no
    oneDNN or numba, an empty batch in int8, a static grid the CPU's pair sums cannot take) the layer dequantises
    through torch itself, its activation format simulated, and ``kernel`` says which."""

    _conv = staticmethod(F.conv2d)
    float_cls = nn.Conv2d
    kernel_policy = "auto"

    def _conv_kernel(self, x: torch.Tensor):
        if x.dtype != torch.float32:
            return None
        cache = self._cache()
        if "conv" not in cache:
            from bitladder.kernels import registry
            from bitladder.kernels.select import choose_conv

            qt, act = self.qweight, self._qmeta.get("act")
            # where the policy's kernel cannot take the layer, a layer without an activation format of its own
            # computes in float: on the weight-only kernel (the same values as dequantising through torch); the
            # dequant-fp32 policy names no kernel, and stays the torch reference
            names = [choose_conv(qt, self.kernel_policy, act)]
            if names[0] is not None and act is None:
                names.append(choose_conv(qt, "auto", None))
            cache["conv"] = None
            for name in dict.fromkeys(n for n in names if n is not None):
                try:
                    kern = registry.get(name).from_layer(qt, self.stride, self.padding, self.dilation, self.groups,
                                                         channels_last=self.channels_last)
                    if getattr(kern, "quantises_input", False):
                        kern = kern.bind(float(self.act_scale), float(self.act_zero_point), act["qtype"])
                except KernelUnsupported as e:
                    log.info("%s: %s cannot run here (%s)", type(self).__name__, name, e)
                    continue
                cache["conv"] = kern
                break
        kern = cache["conv"]
        if kern is not None and kern.needs_batch and (x.dim() != 4 or x.shape[0] == 0):
            return None  # oneDNN's integer convolution takes a non-empty 4-D batch only
        return kern


@HANDLERS.register(nn.Embedding)
class QuantEmbedding(QuantModule):
    """Rows are the channels (one scale per token vector, or per group within it).

    Lookups unpack only the rows they touch (``gather-dequant``: rows on byte boundaries, or read from the
    packing units around them).
    """

    @classmethod
    def from_float(cls, module: nn.Embedding, qweight: QuantizedTensor):
        if module.max_norm is not None or module.sparse:
            return None  # max_norm renormalises weights in place; not meaningful for packed storage
        qm = cls(qweight)
        qm.padding_idx = module.padding_idx
        if qweight.layout.granularity == "tensor":  # one scale, or none (fp16): rows read from their own bytes
            aligned = qweight._row_bytes(qweight.shape[1]) is not None and qweight.mask is None
        else:
            aligned = (qweight._row_bytes(qweight.shape[1]) is not None
                       or qweight.qtype.rules.pack_unit(qweight.qtype) is not None)
        if aligned and qm.kernel not in ("fp64", "fp32"):  # those two are read as stored
            qm.kernel = "gather-dequant-fp32"
        return qm

    def to_float(self) -> nn.Embedding:
        return self._filled(nn.Embedding(*self.qweight.shape, padding_idx=self.padding_idx))

    @eager
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        qt = self.qweight
        cache = self._cache()  # rows of 1- to 8-bit codes in one C call where the format fits
        plan = cache.get("rows")
        if plan is None or plan[0] is not qt:
            plan = cache["rows"] = (qt, RowGather.plan(qt))
        if plan[1] is not None and not idx.is_floating_point():
            return plan[1](idx)
        if qt.byte_rows:  # dequantising every row looked up is then cheaper than sorting out the distinct ones
            return qt.dequantize_rows(idx, torch.float32)
        # unpack only the distinct rows looked up, then gather: the table is never dequantised whole
        uniq, inverse = torch.unique(idx, return_inverse=True)
        return qt.dequantize_rows(uniq, torch.float32)[inverse]
