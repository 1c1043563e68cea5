"""ONNX export of quantised models with standard operators only (opset 21 for 4-bit weights).

The model is exported through a float twin (quantised layers replaced by float layers holding the
dequantised weight), then every quantised weight initializer is replaced by its packed integer
tensor and a standard ``DequantizeLinear``: int8/uint8 per channel or per tensor, int4/uint4 with
*blocked* scales (opset 21 ``block_size``) for group layouts. int3, int2, ternary and binary codes are
widened to 4-bit storage (ONNX has no narrower integer type); float formats become a Cast from fp16 /
bf16 or a DequantizeLinear from fp8. Per-channel input scales (AWQ, SmoothQuant) become a Mul.
Any layer without a rule is named in the error.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.onnx_dynamic import dynamic_int8_eligible, rewrite
from bitladder.io.onnx_ranges import gemm_problems
from bitladder.io.onnx_gather import gather_eligible, rewrite_gather
from bitladder.nn.base import QuantModule
from bitladder.tensor.quantized import QuantizedTensor, _unpack

log = logging.getLogger("bitladder")

MIN_OPSET = {8: 13, 4: 21, "fp8": 19, "float": 13}


def _float_twin(model: nn.Module) -> nn.Module:
    """A float copy whose quantised layers hold their dequantised weights (for tracing only)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if not isinstance(m, QuantModule):
            continue
        kind = type(m).__name__
        if "act" in m.qmeta:
            raise BitladderError(f"layer {name!r}: static activation quantisation has no ONNX export rule yet")
        if m.qweight.qtype.kind == "codebook":
            raise BitladderError(f"layer {name!r}: codebook weights have no ONNX export rule")
        w = m.qweight.dequantize(torch.float32)
        bias = getattr(m, "bias", None)
        if kind == "QuantLinear":
            new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        elif kind in ("QuantConv1d", "QuantConv2d"):
            cls = nn.Conv1d if kind == "QuantConv1d" else nn.Conv2d
            new = cls(w.shape[1] * m.groups, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                      m.groups, bias=bias is not None)
        elif kind == "QuantEmbedding":
            new = nn.Embedding(w.shape[0], w.shape[1], padding_idx=m.padding_idx)
        else:
            raise BitladderError(f"layer {name!r} ({kind}) has no ONNX export rule; accepted: Linear, Conv1d, "
                                 "Conv2d, Embedding")
        with torch.no_grad():
            new.weight.copy_(m.effective_weight().float() if "in_scale" in m.qmeta else w)
            if bias is not None:
                new.bias.copy_(bias)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin.eval()


def _signed_nibbles(q: np.ndarray) -> bytes:
    """int4 two's complement, two per byte, low nibble first (ONNX INT4 raw layout)."""
    u = (q.astype(np.int16) & 0xF).astype(np.uint8).reshape(-1)
    if u.size % 2:
        u = np.concatenate([u, np.zeros(1, np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).tobytes()


def _unsigned_nibbles(u: np.ndarray) -> bytes:
    u = u.astype(np.uint8).reshape(-1)
    if u.size % 2:
        u = np.concatenate([u, np.zeros(1, np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).tobytes()


def _dq_nodes(name: str, m: QuantModule, opset: int):
    """(initializers, nodes) computing the float weight ``name`` from packed integer storage."""
    from onnx import TensorProto, helper, numpy_helper

    qt: QuantizedTensor = m.qweight
    q = qt.qtype
    layer = name.removesuffix(".weight")
    shape = list(qt.shape)
    c, k, nb, b = qt.layout.dims(qt.shape)
    inits, nodes = [], []
    out = name if "in_scale" not in m.qmeta else f"{name}__dq"
    if q.kind == "float":
        if q.name in ("fp8_e4m3", "fp8_e5m2"):
            if opset < MIN_OPSET["fp8"]:
                raise BitladderError(f"layer {layer!r}: fp8 needs opset >= 19, got {opset}")
            dt = TensorProto.FLOAT8E4M3FN if q.name == "fp8_e4m3" else TensorProto.FLOAT8E5M2
            inits.append(helper.make_tensor(f"{name}__q", dt, shape, vals=qt.packed.numpy().tobytes(), raw=True))
            inits.append(numpy_helper.from_array(qt.scale.float().reshape(-1).numpy(), f"{name}__s"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}__q", f"{name}__s"], [out], axis=0))
        else:
            dt = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16, "fp32": TensorProto.FLOAT,
                  "fp64": TensorProto.DOUBLE}[q.name]
            inits.append(helper.make_tensor(f"{name}__q", dt, shape, vals=qt.packed.numpy().tobytes(), raw=True))
            nodes.append(helper.make_node("Cast", [f"{name}__q"], [out], to=TensorProto.FLOAT))
        return inits, nodes, out
    codes = qt.codes().reshape(c, k).numpy().astype(np.int32)
    bits = 8 if q.bits == 8 else 4
    if bits == 4 and opset < MIN_OPSET[4]:
        raise BitladderError(f"layer {layer!r}: {q.name} weights need opset >= 21 (INT4), got {opset}")
    zp = None
    if qt.zero_point is not None:
        if qt.zero_point.is_floating_point():
            raise BitladderError(f"layer {layer!r}: fractional zero points (HQQ) have no ONNX export rule")
        zp = _unpack(qt.zero_point, q, c * nb).reshape(c, nb).numpy().astype(np.int32)
    signed = zp is None
    if signed:
        dt = TensorProto.INT8 if bits == 8 else TensorProto.INT4
        raw = codes.astype(np.int8).tobytes() if bits == 8 else _signed_nibbles(codes)
    else:
        dt = TensorProto.UINT8 if bits == 8 else TensorProto.UINT4
        raw = codes.astype(np.uint8).tobytes() if bits == 8 else _unsigned_nibbles(codes)
    per_tensor = qt.layout.granularity == "tensor"
    inits.append(helper.make_tensor(f"{name}__q", dt, shape if per_tensor else [c, k], vals=raw, raw=True))
    scale = qt.scale.float().numpy().reshape(c, nb)
    grouped = qt.layout.granularity == "group" and nb > 1
    if qt.layout.granularity == "tensor":
        scale = scale.reshape(())
    elif not grouped:
        scale = scale.reshape(c)
    inits.append(numpy_helper.from_array(np.ascontiguousarray(scale, dtype=np.float32), f"{name}__s"))
    ins = [f"{name}__q", f"{name}__s"]
    if zp is not None:
        zshape = list(scale.shape)
        zdt = TensorProto.UINT8 if bits == 8 else TensorProto.UINT4
        zraw = zp.astype(np.uint8).tobytes() if bits == 8 else _unsigned_nibbles(zp)
        inits.append(helper.make_tensor(f"{name}__z", zdt, zshape, vals=zraw, raw=True))
        ins.append(f"{name}__z")
    attrs = {"axis": 1, "block_size": b} if grouped else ({} if qt.layout.granularity == "tensor" else {"axis": 0})
    rows_out = out if per_tensor or (len(shape) == 2 and qt.layout.axis == 0) else f"{name}__rows"
    nodes.append(helper.make_node("DequantizeLinear", ins, [rows_out], **attrs))
    if rows_out != out:
        if qt.layout.axis % len(shape) != 0:
            raise BitladderError(f"layer {layer!r}: weights quantised along axis {qt.layout.axis} have no export rule")
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), f"{name}__shape"))
        nodes.append(helper.make_node("Reshape", [rows_out, f"{name}__shape"], [out]))
    return inits, nodes, out


ACTIVATIONS = ("float", "dynamic", "dynamic-tensor")


def export_onnx(model: nn.Module, example: Any, path: str | Path, opset: int = 21,
                activations: str = "float") -> Path:
    """Export ``model`` (quantised or not) called on ``example`` (a tensor or a dict of tensors).

    ``activations="dynamic"``: int8 Linear layers run as DynamicQuantizeLinear + MatMulInteger
    (faster in onnxruntime) with one activation scale per token; "dynamic-tensor": one scale per call
    (what onnxruntime's own quantize_dynamic does); "float" keeps weight-only semantics.
    """
    if activations not in ACTIVATIONS:
        raise BitladderError(f"activations must be one of {', '.join(ACTIVATIONS)}; got {activations!r}")
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise BitladderError("ONNX export needs the packages onnx and onnxruntime") from None
    if opset < 13:
        raise BitladderError(f"opset {opset} is too old; accepted: 13 and newer (21 for 4-bit weights)")
    path = Path(path)
    if not path.parent.is_dir():
        raise BitladderError(f"cannot write {path}: folder {path.parent} does not exist")
    quantised = {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}
    twin = _float_twin(model)
    if isinstance(example, dict):  # only the inputs forward() names: the exporter maps names by position
        params = inspect.signature(model.forward).parameters
        named = [k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        example = {k: v for k, v in example.items() if k in named} or example
    names = list(example) if isinstance(example, dict) else ["input"]
    args, kwargs = ((), dict(example)) if isinstance(example, dict) else ((example,), {})
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(twin, args, str(tmp), kwargs=kwargs or None, dynamo=False, opset_version=opset,
                          do_constant_folding=False, input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} | ({1: "seq"} if isinstance(example, dict) else {})
                                        for n in names} | {"output": {0: "batch"}})
        proto = onnx.load(str(tmp))
        inits = {i.name: i for i in proto.graph.initializer}
        new_nodes, shared = [], {}
        for name, m in quantised.items():
            wname = f"{name}.weight" if name else "weight"
            if wname not in inits:
                if any(wname in n.input for n in proto.graph.node):
                    raise BitladderError(f"layer {name!r}: its weight is not a plain initializer in the graph")
                log.info("layer %s is not used by the traced forward; left out of the ONNX file", name)
                continue
            if activations != "float" and dynamic_int8_eligible(m) \
                    and rewrite(proto, wname, m, activations == "dynamic", shared):
                proto.graph.initializer.remove(inits[wname])
                continue
            if gather_eligible(m) and rewrite_gather(proto, wname, m):
                proto.graph.initializer.remove(inits[wname])
                continue
            proto.graph.initializer.remove(inits[wname])
            extra, nodes, out = _dq_nodes(wname, m, opset)
            proto.graph.initializer.extend(extra)
            new_nodes += nodes
            if "in_scale" in m.qmeta:
                s = m.in_scale.float().numpy()
                shape = [1] * len(m.qweight.shape)
                shape[m.in_axis] = -1
                proto.graph.initializer.append(numpy_helper.from_array(s.reshape(shape), f"{wname}__in"))
                new_nodes.append(helper.make_node("Mul", [out, f"{wname}__in"], [wname]))
        nodes = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes + nodes)  # weights first: a valid topological order
        onnx.checker.check_model(proto)
        problems = gemm_problems(proto)
        if problems:  # a graph that is right on this CPU and wrong on another is never written
            raise BitladderError(f"the exported graph would saturate on CPUs without VNNI: {problems[0]}")
        onnx.save(proto, str(tmp))
    return path
