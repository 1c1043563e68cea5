"""Base class of quantised modules: the packed weight lives in buffers, metadata beside it."""

from __future__ import annotations

import functools

import torch
from torch import nn

from bitladder.formats.layout import Layout
from bitladder.formats.quant import fake_quant_per_token
from bitladder.formats.qtypes import get_qtype
from bitladder.tensor.quantized import QuantizedTensor

_PARTS = ("packed", "scale", "zero_point", "table", "mask")


def eager(forward):
    """A quantised layer's forward, run eagerly under ``torch.compile`` (one graph break per layer, the float
    parts of the model between them compiled): its kernels are C calls on numpy views and its caches Python state,
    which Dynamo cannot trace (it failed on guards and on uint16 fake tensors): docs/DESIGN.md, 'torch.compile'.
    Outside a compile it is the plain call: ``torch.compiler.disable`` is applied only while compiling, since it
    imports ``torch._dynamo``, which importing bitladder must not (a second of start-up, another heap layout)."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():
            return _outside_dynamo(forward)(*args, **kwargs)
        return forward(*args, **kwargs)

    return run


@functools.lru_cache(maxsize=None)
def _outside_dynamo(fn):
    """``fn`` wrapped by ``torch.compiler.disable`` (once per function; only reached while compiling)."""
    return torch.compiler.disable(fn)


class KernelCache(dict):
    """Built kernels of one layer (sessions, prepacked weights): never copied, pickled or saved. ``picks``
    remembers the kernel chosen per input row count, so a call does not rebuild the weight's description
    to choose again, a measurable share of a MiniLM forward (docs/DESIGN.md, 'Per-token W8A8 on a
    per-tensor GEMM')."""

    MAX_PICKS = 1024  # distinct row counts remembered; a server that sees more starts over

    def __init__(self) -> None:
        super().__init__()
        self.picks: dict = {}

    def __deepcopy__(self, memo) -> "KernelCache":
        return KernelCache()

    def __reduce__(self):
        return (KernelCache, ())


class QuantModule(nn.Module):
    """A layer whose weight is a :class:`QuantizedTensor`.

    Subclasses set ``weight_axis`` (the output-channel axis of the float weight) and implement
    ``forward`` (and ``from_float(module, qweight)`` when the default, which keeps the bias, is not
    enough). ``kernel`` names the compute path actually
    used; the ladder report shows it per layer.
    """

    weight_axis: int = 0
    in_channel_dim: int = -1  # where the input channels sit in the layer's input (convolutions: 1)
    in_axis: int = 1  # the weight's input-channel axis

    def __init__(self, qweight: QuantizedTensor) -> None:
        super().__init__()
        self._qmeta = qweight.meta()
        self.n_clipped = qweight.n_clipped
        for part, t in qweight.tensors().items():
            self.register_buffer(f"weight_{part}", t)
        # fp64 weights compute in fp64; everything else dequantises to fp32 for now
        self.compute_dtype = torch.float64 if qweight.qtype.name == "fp64" else torch.float32
        self.kernel = "fp64" if qweight.qtype.name == "fp64" else (
            "fp32" if qweight.qtype.name == "fp32" else "dequant-fp32")
        self._dequant_label = self.kernel

    # ---- compute kernels (Linear-like layers) ------------------------------------------------
    kernel_policy: str = "dequant-fp32"

    def set_kernel_policy(self, policy: str) -> None:
        """Set the kernel policy (recorded in the metadata) and drop the kernels built so far."""
        self.kernel_policy = policy
        self._qmeta["kernel"] = policy
        self._kernels = KernelCache()

    def _load_from_state_dict(self, *args, **kwargs):  # new weights: built kernels are stale
        self._kernels = KernelCache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _forget_picks(self) -> None:
        """The layer's inputs changed (an activation format, an input scale): choose its kernels again."""
        cache = self.__dict__.get("_kernels")
        if cache is not None:
            cache.picks.clear()

    def _kernel_for(self, rows: int, binary_rows: bool = False):
        """The kernel object for a call with ``rows`` input rows, or None for the dequant path (memoised)."""
        cache = self._cache()  # not setdefault: that would build a KernelCache on every call
        key = (rows, binary_rows)
        if key not in cache.picks:
            if len(cache.picks) >= cache.MAX_PICKS:
                cache.picks.clear()
            cache.picks[key] = self._pick_kernel(rows, binary_rows, cache)
        return cache.picks[key]

    def _pick_kernel(self, rows: int, binary_rows: bool, cache: KernelCache):
        """The kernel object for a call with ``rows`` input rows, or None for the dequant path.

        Layers that quantise their activations have none, except trained binary layers (binary
        weights, binarised inputs) called with ``binary_rows``: their per-sample input scale is then per
        row, exactly what the XNOR-popcount kernel computes.
        """
        if self.kernel_policy == "dequant-fp32" or self.compute_dtype != torch.float32:
            return None
        act = self._qmeta.get("act")
        if act is not None and self._static_int(act):
            return self._static_kernel(rows, cache)
        if act is not None:
            xnor = (binary_rows and act.get("qtype") == "binary" and self._qmeta["qtype"] == "binary"
                    and "in_scale" not in self._qmeta and self.kernel_policy in ("auto", "binary-xnor"))
            if not xnor:
                return None
            name = "binary-xnor"
        else:
            from bitladder.kernels.select import choose

            # auto's "dequant-fp32" is the registered kernel (the CPU's fp32 GEMM, kernels.fp32_gemm); naming the
            # policy takes the layer's own dequant path above, the reference a fake-quantised twin matches exactly
            name = choose(self.qweight, rows, self.kernel_policy)
        if name not in cache:
            from bitladder.kernels import KERNELS, KernelUnsupported

            try:
                cache[name] = KERNELS[name].from_qtensor(self.qweight)
            except KernelUnsupported:
                if act is None:
                    raise
                cache[name] = None  # no popcount kernel here (numba missing): the dequant path
        return cache[name]

    def _static_int(self, act: dict) -> bool:
        """Static activations an integer GEMM can take: a calibrated grid of at most 256 codes, int8 weights."""
        from bitladder.kernels import KERNELS
        from bitladder.kernels.fbgemm_w8a8 import int8_per_row, levels_for

        if act.get("dynamic") or act["qtype"] == "binary" or self.kernel_policy not in ("auto", "int8-w8a8-static"):
            return False
        qt = get_qtype(act["qtype"])
        if not (qt.rules.integer_codes and qt.qmax - qt.qmin <= 255 and int8_per_row(self.qweight)):
            return False
        # auto takes the integer GEMM only where it computes the layer's own codes (VNNI, weights of 7 bits, the C
        # kernel's 16-bit pairs or oneDNN's [lo; hi] split); naming the family accepts fbgemm's 127-step grid where
        # neither is there
        return (self.kernel_policy != "auto" or KERNELS["int8-w8a8-onednn-static"].available()
                or KERNELS["int8-w8a8-c-static"].available()
                or qt.qmax - qt.qmin <= levels_for(self.qweight.codes()))  # the cheap test first

    def _static_kernel(self, rows: int, cache: KernelCache):
        from bitladder.kernels import KERNELS
        from bitladder.kernels.select import choose

        name = choose(self.qweight, rows, "int8-w8a8-static")
        if name not in cache:
            cache[name] = KERNELS[name].from_qtensor(self.qweight).bind(
                float(self.act_scale), float(self.act_zero_point), self._qmeta["act"]["qtype"])
        return cache[name]

    def _cache(self) -> KernelCache:
        cache = self.__dict__.get("_kernels")
        if cache is None:
            cache = self.__dict__["_kernels"] = KernelCache()
        return cache

    @property
    def qweight(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor (a view of the layer's buffers). Kept while the buffers and the
        metadata it reads stay the same objects and values: building it was most of an embedding lookup."""
        bufs, meta = self._buffers, self._qmeta
        parts = tuple(bufs.get(f"weight_{p}") for p in _PARTS)
        key = (meta["qtype"], tuple(meta["shape"]), tuple(meta["layout"].items()), self.n_clipped)
        cache = self._cache()
        hit = cache.get("qweight")
        if hit is not None and hit[1] == key and all(a is b for a, b in zip(hit[0], parts)):
            return hit[2]
        t = dict(zip(_PARTS, parts))
        qt = QuantizedTensor(t["packed"], t["scale"], t["zero_point"], get_qtype(meta["qtype"]), key[1],
                             Layout(**meta["layout"]), self.n_clipped, t["table"], t["mask"])
        cache["qweight"] = (parts, key, qt)
        return qt

    @property
    def qmeta(self) -> dict:
        """A copy of the layer's quantisation metadata."""
        return dict(self._qmeta)

    def weight(self) -> torch.Tensor:  # noqa: D401 - a method, not a Parameter, on purpose
        """The dequantised weight, in the compute dtype."""
        if self._qmeta["qtype"] == "fp32":
            # the stored bytes themselves, viewed as fp32: kept (it holds no memory of its own) for the packed
            # buffer it views, so the fp32 rung's layers do not rebuild it per call
            cache = self._cache()
            view = cache.get("fp32-view")
            if view is None or view[0] is not self.weight_packed:
                view = cache["fp32-view"] = (self.weight_packed, self.qweight.dequantize(torch.float32))
            return view[1]
        return self.qweight.dequantize(self.compute_dtype)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies to its raw input: dequantised, input scale folded back in."""
        w = self.qweight.dequantize(torch.float64)
        if "in_scale" in self._qmeta:
            s = self.in_scale.double()
            if "outliers" in self._qmeta:  # zero on the integer path; the float path applies their own scale
                s = s.index_copy(0, self.act_outliers, self.outlier_scale.double())
            shape = [1] * w.dim()
            shape[self.in_axis] = -1
            w = w * s.reshape(shape)
        return w

    def to_float(self) -> nn.Module:
        """The float layer this one stands for, holding the weight it applies (ONNX export traces it)."""
        raise NotImplementedError(f"{type(self).__name__} has no float form")

    def _filled(self, new: nn.Module) -> nn.Module:
        """``new`` with this layer's applied weight (input scale folded back in) and bias."""
        w = self.effective_weight().float() if "in_scale" in self._qmeta else self.qweight.dequantize(torch.float32)
        bias = getattr(self, "bias", None)
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias)
        return new

    def _bias(self) -> torch.Tensor | None:
        b = getattr(self, "bias", None)
        return None if b is None else b.to(self.compute_dtype)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QuantizedTensor) -> "QuantModule | None":
        """Build from the float module; the default keeps its bias. Return None to leave it in float."""
        qm = cls(qweight)
        b = getattr(module, "bias", None)
        qm.bias = None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False)
        return qm

    # ---- input transforms: per-channel input scale (AWQ, SmoothQuant), activation quantisation ----
    def set_in_scale(self, s: torch.Tensor) -> None:
        """Multiply inputs by ``s`` per input channel (the weight was divided accordingly)."""
        self.register_buffer("in_scale", s.detach().float().clone())
        self._qmeta["in_scale"] = int(s.numel())
        self._forget_picks()

    def set_outliers(self, idx: torch.Tensor) -> None:
        """Take input channels ``idx`` off the integer path into a float one (:mod:`bitladder.nn.outliers`): their
        input scale becomes zero, and is kept as ``outlier_scale`` for the float product."""
        idx = idx.detach().long().flatten().clone()
        n_in = self.qweight.shape[self.in_axis]
        s = self.in_scale.clone() if "in_scale" in self._qmeta else torch.ones(n_in)
        self.register_buffer("act_outliers", idx)
        self.register_buffer("outlier_scale", s[idx].clone())
        s[idx] = 0
        self.set_in_scale(s)
        self._qmeta["outliers"] = int(idx.numel())
        self._kernels = KernelCache()

    def can_scale_outputs(self) -> bool:
        """Whether :meth:`scale_outputs` applies: the weight dequantises linearly in scales held per output row."""
        qt = self.qweight
        return (qt.scale is not None and qt.table is None and qt.layout.granularity in ("channel", "group")
                and qt.layout.axis == self.weight_axis)

    def scale_outputs(self, t: torch.Tensor) -> None:
        """Multiply the layer's outputs by ``t`` per output channel: its row scales (rounded to their storage
        dtype; the codes stay) and its bias. Folds the next layer's input scale into this one (AWQ)."""
        if not self.can_scale_outputs():
            raise ValueError(f"{type(self).__name__} ({self._qmeta['qtype']}, {self._qmeta['layout']}) "
                             f"has no per-output-row scales to fold into")
        s = self.weight_scale
        self.weight_scale = (s.float() * t.float().reshape(-1, *[1] * (s.dim() - 1))).to(s.dtype)
        if getattr(self, "bias", None) is not None:
            self.bias.data = self.bias.data * t.to(self.bias.dtype)
        self._kernels = KernelCache()

    def set_act(self, qtype: str, scale: torch.Tensor, zero_point: torch.Tensor, observer: str) -> None:
        """Quantise inputs statically to ``qtype`` with a calibrated scale and zero point."""
        self.register_buffer("act_scale", scale.detach().float().reshape(1).clone())
        self.register_buffer("act_zero_point", zero_point.detach().float().reshape(1).clone())
        self._qmeta["act"] = {"qtype": qtype, "observer": observer}
        self._kernels = KernelCache()  # a static kernel holds the grid
        self.kernel = self._dequant_label = f"{self._dequant_label}+act-{qtype}-fakequant"

    def set_binary_act(self, shift: torch.Tensor) -> None:
        """Binarise inputs: sign(x - shift) * mean|x - shift| per sample (a trained binary network)."""
        self.register_buffer("act_shift", shift.detach().float().clone())
        self._qmeta["act"] = {"qtype": "binary", "observer": "learned-shift", "channels": int(shift.numel())}
        self._forget_picks()
        self.kernel = self._dequant_label = f"{self._dequant_label}+act-binary"

    def set_token_act(self, bits: int = 8) -> None:
        """Quantise inputs per token (absmax over the input channels, a scale per row computed at each
        call: BitNet b1.58). Simulated: the quantised inputs are dequantised and multiply the dequantised
        weight in fp32 (the storage is packed, the compute is not low-bit)."""
        self._qmeta["act"] = {"qtype": f"int{bits}", "observer": "per-token-absmax", "dynamic": "token"}
        self._forget_picks()
        self.kernel = self._dequant_label = f"{self._dequant_label}+act-int{bits}-per-token-fakequant"

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input times the per-channel input scale, where the layer has one (AWQ, SmoothQuant)."""
        if "in_scale" not in self._qmeta:
            return x
        shape = [1] * x.dim()
        shape[self.in_channel_dim] = -1
        return x * self.in_scale.reshape(shape)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input after the input scale and the recorded activation quantisation (binary, per-token or static)."""
        x = self.scale_input(x)
        if "act" in self._qmeta and self._qmeta["act"]["qtype"] == "binary":
            shape = [1] * x.dim()
            shape[self.in_channel_dim] = -1
            d = x - self.act_shift.reshape(shape)
            beta = d.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
            return torch.where(d >= 0, 1.0, -1.0).to(x.dtype) * beta
        if "act" in self._qmeta and self._qmeta["act"].get("dynamic") == "token":
            return fake_quant_per_token(x, get_qtype(self._qmeta["act"]["qtype"]).bits, self.in_channel_dim)
        if "act" in self._qmeta:
            qt = get_qtype(self._qmeta["act"]["qtype"])
            s, z = self.act_scale, self.act_zero_point
            x = (torch.clamp(torch.round(x / s) + z, qt.qmin, qt.qmax) - z) * s
        return x

    @classmethod
    def skeleton(cls, module: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> "QuantModule":
        """Rebuild from stored parts (used when loading an artifact)."""
        qm = cls.from_float(module, QuantizedTensor.from_parts(tensors, meta))
        if "in_scale" in meta:
            qm.set_in_scale(torch.ones(meta["in_scale"]))
        if "outliers" in meta:  # the values come with the stored tensors
            qm.register_buffer("act_outliers", torch.zeros(meta["outliers"], dtype=torch.long))
            qm.register_buffer("outlier_scale", torch.zeros(meta["outliers"]))
            qm._qmeta["outliers"] = meta["outliers"]
        if "act" in meta and meta["act"]["qtype"] == "binary":
            qm.set_binary_act(torch.zeros(meta["act"]["channels"]))
        elif "act" in meta and meta["act"].get("dynamic") == "token":
            qm.set_token_act(get_qtype(meta["act"]["qtype"]).bits)
        elif "act" in meta:
            qm.set_act(meta["act"]["qtype"], torch.ones(1), torch.zeros(1), meta["act"]["observer"])
        if "method" in meta:
            qm._qmeta["method"] = meta["method"]
        if "kernel" in meta:
            qm.set_kernel_policy(meta["kernel"])
        return qm

    def extra_repr(self) -> str:
        m = self._qmeta
        extra = f", outliers={m['outliers']}" if "outliers" in m else ""
        return f"{m['qtype']}, shape={tuple(m['shape'])}, layout={m['layout']}, kernel={self.kernel}{extra}"
