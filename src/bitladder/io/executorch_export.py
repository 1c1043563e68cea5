"""ExecuTorch export: a ``.pte`` program lowered to XNNPACK, carrying bitladder's own quantised weights.

Every quantised Linear becomes ``per-token int8 input -> dequantize(codes, scales) -> linear`` with the codes
and scales bitladder computed (GPTQ, AWQ, RTN, ...), never a re-quantisation of the float model
(:mod:`bitladder.io.executorch_weights` maps them onto XNNPACK's int8 / int4 / int4-group formats and refuses
what those cannot hold); XNNPACK's partitioner lowers the pattern to one dynamically quantised
fully-connected node, and the float rest of the graph to its fp32 operators. The program is read with
``executorch.runtime``: ``Runtime.get().load_program(path).load_method("forward").execute(flat_inputs(...))``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.executorch_weights import xnn_layer
from bitladder.nn.base import QuantModule

log = logging.getLogger("bitladder")

WEIGHTS = ("int", "float")
ACTIVATIONS = ("dynamic", "float")


def _need_executorch():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise BitladderError("ExecuTorch export needs the package executorch (pip install 'bitladder[deploy]')") from None
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops it lowers)
    return XnnpackPartitioner, to_edge_transform_and_lower


def _float_layer(name: str, m: QuantModule) -> nn.Module:
    if "act" in m.qmeta:
        raise BitladderError(f"layer {name!r}: its {m.qmeta['act']['qtype']} activations would be dropped by "
                             "weights='float'; accepted: weights='int' (XNNPACK's int8 per-token activations)")
    try:
        return m.to_float()
    except NotImplementedError:
        raise BitladderError(f"layer {name!r} ({type(m).__name__}) has no float form; accepted: Linear, Conv1d, "
                             "Conv2d, Embedding") from None


def _twin(model: nn.Module, weights: str, round_scales: bool) -> nn.Module:
    """A copy whose quantised layers are XNNPACK-shaped integer layers (or float layers holding their values)."""
    twin = copy.deepcopy(model).eval()
    for name, m in list(twin.named_modules()):
        if not isinstance(m, QuantModule):
            continue
        new = xnn_layer(name, m, round_scales) if weights == "int" else _float_layer(name, m)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin


def call_args(model: nn.Module, example: Any) -> tuple[tuple, dict]:
    """(args, kwargs) the program was traced with: a tensor is the one positional input; a dict keeps the keys
    ``forward`` names, in its parameter order (others only where it takes ``**kwargs``, after them)."""
    if not isinstance(example, dict):
        return (example,), {}
    params = inspect.signature(model.forward).parameters
    named = [k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    keys = [k for k in named if k in example] + ([k for k in example if k not in named] if var_kw else [])
    return (), {k: example[k] for k in keys}


def flat_inputs(model: nn.Module, example: Any) -> list[torch.Tensor]:
    """The inputs of the exported program's ``forward``, in order, for ``executorch.runtime``'s ``execute``."""
    args, kwargs = call_args(model, example)
    return [*args, *kwargs.values()]


class _Positional(nn.Module):
    """The model called with its dict inputs as positional tensors, in a fixed order (the program's inputs)."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor):
        return self.model(**dict(zip(self.keys, tensors)))


def _token_ids(inputs: list) -> bool:
    """Whether the inputs are (batch, tokens) integer tensors: a language model's token ids."""
    return all(isinstance(v, torch.Tensor) and v.dim() == 2 and not v.is_floating_point() for v in inputs)


def _dynamic_shapes(inputs: list, tokens: bool, max_batch: int, max_tokens: int) -> tuple:
    """Batch (dim 0) dynamic for every input; with ``tokens`` (dict inputs, token ids) also dim 1, shared by all.
    The runtime plans its memory for the largest shapes, so both have an upper bound."""
    batch, seq = torch.export.Dim("batch", min=1, max=max_batch), torch.export.Dim("tokens", min=1, max=max_tokens)
    for v in inputs:
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            raise BitladderError(f"example inputs must be tensors with a batch dimension; got {type(v).__name__}")
        sizes = [(v.shape[0], max_batch, "batch", "max_batch")] + (
            [(v.shape[1], max_tokens, "token", "max_tokens")] if tokens and v.dim() >= 2 else [])
        for n, top, what, arg in sizes:
            if not 2 <= n <= top:
                raise BitladderError(f"the example's {what} size is {n}; accepted: 2 to {arg}={top} (a size of 1 "
                                     "would be fixed into the program)")
    return tuple({0: batch, 1: seq} if tokens and v.dim() >= 2 else {0: batch} for v in inputs)


def export_executorch(model: nn.Module, example: Any, path: str | Path, weights: str = "int",
                      activations: str = "dynamic", round_scales: bool = False, max_batch: int = 32,
                      max_tokens: int = 128) -> Path:
    """Write ``model`` (quantised by bitladder or not) called on ``example`` as an XNNPACK ``.pte`` at ``path``.

    ``weights="int"`` (with ``activations="dynamic"``): quantised Linear layers keep bitladder's codes and scales
    (int8 / int4 per channel, int4 in groups) and run on XNNPACK's int8 dynamic-activation kernels (one
    asymmetric int8 scale per token, replacing any per-token rule bitladder simulated). ``weights="float"``
    (with ``activations="float"``): every quantised layer as its float layer holding the dequantised weight,
    the exact numbers of bitladder's weight-only forward at fp32 size. ``round_scales``: accept group scales
    that are not bf16 values and round them (XNNPACK's group scales are bf16). The batch dimension (and for
    dict inputs and (batch, tokens) token ids the token dimension) stays dynamic up to ``max_batch``
    (``max_tokens``), the shapes the runtime plans its memory for; give an example with at least 2 of each.
    """
    if weights not in WEIGHTS:
        raise BitladderError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if activations not in ACTIVATIONS:
        raise BitladderError(f"activations must be one of {', '.join(ACTIVATIONS)}; got {activations!r}")
    quantised = any(isinstance(m, QuantModule) for m in model.modules())
    if weights == "float" and activations == "dynamic":
        raise BitladderError("activations='dynamic' runs on integer weights; accepted: weights='int', or "
                             "weights='float' with activations='float'")
    if quantised and weights == "int" and activations == "float":
        raise BitladderError("XNNPACK runs integer weights only with int8 dynamic activations; accepted: "
                             "activations='dynamic', or weights='float' (dequantised fp32 weights)")
    path = Path(path)
    if not path.parent.is_dir():
        raise BitladderError(f"cannot write {path}: folder {path.parent} does not exist")
    partitioner, lower = _need_executorch()
    twin = _twin(model, weights, round_scales)
    args, kwargs = call_args(model, example)
    # a view's strides would be traced into the program as guards (e.g. "stride 0 != tokens")
    inputs = [v.contiguous() if isinstance(v, torch.Tensor) else v for v in [*args, *kwargs.values()]]
    shapes = _dynamic_shapes(inputs, bool(kwargs) or _token_ids(inputs), max_batch, max_tokens)
    traced, shapes = (_Positional(twin, list(kwargs)), (shapes,)) if kwargs else (twin, shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(traced, tuple(inputs), dynamic_shapes=shapes, strict=False)
        except Exception as e:  # torch.export's own reasons run to pages: the first line says which
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BitladderError(f"torch.export could not trace the model on this example: {first}") from e
        edge = lower(ep, partitioner=[partitioner()])
        _all_lowered(edge.exported_program())
        program = edge.to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return path


def _all_lowered(ep) -> None:
    """Quantised layers outside the XNNPACK delegate would need operators the runtime lacks: refuse them here."""
    left = [n for n in ep.graph.nodes if n.op == "call_function" and "quantized_decomposed" in str(n.target)]
    if left:
        raise BitladderError(f"XNNPACK did not take {len(left)} quantised operations (first: {left[0].name}); "
                             "accepted: quantised Linear layers on 2-D or wider float inputs")
