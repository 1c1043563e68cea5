"""ONNX weight rules, one per number kind's declared rule (``Kind.onnx``): how a packed weight becomes
initializers + the nodes that compute its float value inside the graph."""

from __future__ import annotations

import numpy as np
import torch

from bitladder.errors import BitladderError
from bitladder.nn.base import QuantModule
from bitladder.tensor.quantized import QuantizedTensor, _unpack

MIN_OPSET = {8: 13, 4: 21, "fp8": 19, "float": 13}


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


def weight_nodes(name: str, m: QuantModule, opset: int, in_scale: bool = True, gemm: bool = False):
    """(initializers, nodes, output) computing the float weight ``name`` from its packed storage, by the
    export rule its number kind names (:attr:`bitladder.formats.kinds.Kind.onnx`). The output is ``name``
    itself unless the layer's input scale is still to be multiplied in (``in_scale``). ``gemm``: the weight
    meets uint8 activations in an integer GEMM the runtime forms (Q/DQ), so codes wider than 7 bits are
    written as uint8 around 128 (:func:`bitladder.io.onnx_ranges.safe_weights`)."""
    qt: QuantizedTensor = m.qweight
    out = f"{name}__dq" if in_scale and "in_scale" in m.qmeta else name
    rule = WEIGHT_RULES.get(qt.qtype.rules.onnx)
    if rule is None:
        raise BitladderError(f"layer {name.removesuffix('.weight')!r}: {qt.qtype.kind} weights have no ONNX rule")
    inits, nodes = rule(name, qt, out, opset, gemm=gemm)
    return inits, nodes, out


def _float(name: str, qt: QuantizedTensor, out: str, opset: int, gemm: bool = False):
    """Scaled floats (fp8) as DequantizeLinear from FLOAT8 storage; unscaled ones as a Cast (``gemm``: no
    integer GEMM reads float codes, so nothing changes)."""
    from onnx import TensorProto, helper, numpy_helper

    q, layer, shape = qt.qtype, name.removesuffix(".weight"), list(qt.shape)
    inits, nodes = [], []
    dt = {torch.float16: TensorProto.FLOAT16, torch.bfloat16: TensorProto.BFLOAT16, torch.float32: TensorProto.FLOAT,
          torch.float64: TensorProto.DOUBLE, torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN,
          torch.float8_e5m2: TensorProto.FLOAT8E5M2}[q.dtype]
    inits.append(helper.make_tensor(f"{name}__q", dt, shape, vals=qt.packed.numpy().tobytes(), raw=True))
    if qt.scale is None:  # stored as itself
        nodes.append(helper.make_node("Cast", [f"{name}__q"], [out], to=TensorProto.FLOAT))
        return inits, nodes
    if opset < MIN_OPSET["fp8"]:
        raise BitladderError(f"layer {layer!r}: {q.name} needs opset >= {MIN_OPSET['fp8']}, got {opset}")
    inits.append(numpy_helper.from_array(qt.scale.float().reshape(-1).numpy(), f"{name}__s"))
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}__q", f"{name}__s"], [out], axis=0))
    return inits, nodes


def _integer(name: str, qt: QuantizedTensor, out: str, opset: int, k_major: bool = False, gemm: bool = False):
    """Integer codes (int, ternary, binary) as INT8/INT4 (UINT with zero points) + DequantizeLinear, per
    tensor, channel or block, reshaped back for convolutions. ``k_major`` (blocked 2-D weights): codes,
    scales and zero points stored transposed, so the output is the (in, out) matrix a MatMul reads."""
    from onnx import TensorProto, helper, numpy_helper

    q, layer, shape = qt.qtype, name.removesuffix(".weight"), list(qt.shape)
    c, k, nb, b = qt.layout.dims(qt.shape)
    inits, nodes = [], []
    codes = qt.codes().reshape(c, k).numpy().astype(np.int32)
    turn = (lambda a: np.ascontiguousarray(a.T)) if k_major else (lambda a: a)
    bits = 8 if q.bits > 4 else 4  # int5-int7 codes are stored in INT8, int2-int4 in INT4
    if bits == 4 and opset < MIN_OPSET[4]:
        raise BitladderError(f"layer {layer!r}: {q.name} weights need opset >= 21 (INT4), got {opset}")
    zp = None
    if qt.zero_point is not None:
        if qt.zero_point.is_floating_point():
            raise BitladderError(f"layer {layer!r}: fractional zero points (HQQ) have no ONNX export rule")
        zp = turn(_unpack(qt.zero_point, q, c * nb).reshape(c, nb).numpy().astype(np.int32))
    if gemm and zp is None and bits == 8:  # u8 x s8 pairs could saturate without VNNI: u8 x u8 instead
        from bitladder.io.onnx_ranges import safe_weights

        codes, z = safe_weights(codes)
        if z:
            zp = turn(np.full((c, nb), int(z), np.int32))
    signed = zp is None
    if signed:
        dt = TensorProto.INT8 if bits == 8 else TensorProto.INT4
        raw = turn(codes).astype(np.int8).tobytes() if bits == 8 else _signed_nibbles(turn(codes))
    else:
        dt = TensorProto.UINT8 if bits == 8 else TensorProto.UINT4
        raw = turn(codes).astype(np.uint8).tobytes() if bits == 8 else _unsigned_nibbles(turn(codes))
    per_tensor = qt.layout.granularity == "tensor"
    grouped = qt.layout.granularity == "group" and nb > 1
    if k_major and not (grouped and len(shape) == 2 and qt.layout.axis % 2 == 0):
        raise BitladderError(f"layer {layer!r}: only blocked 2-D weights are written input-major")
    dims = shape if per_tensor else ([k, c] if k_major else [c, k])
    inits.append(helper.make_tensor(f"{name}__q", dt, dims, vals=raw, raw=True))
    scale = turn(qt.scale.float().numpy().reshape(c, nb))
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
    attrs = {"axis": 0 if k_major else 1, "block_size": b} if grouped else ({} if per_tensor else {"axis": 0})
    rows_out = out if per_tensor or k_major or (len(shape) == 2 and qt.layout.axis == 0) else f"{name}__rows"
    nodes.append(helper.make_node("DequantizeLinear", ins, [rows_out], **attrs))
    if rows_out != out:
        if qt.layout.axis % len(shape) != 0:
            raise BitladderError(f"layer {layer!r}: weights quantised along axis {qt.layout.axis} have no export rule")
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), f"{name}__shape"))
        nodes.append(helper.make_node("Reshape", [rows_out, f"{name}__shape"], [out]))
    return inits, nodes


WEIGHT_RULES = {"float": _float, "dequantize-linear": _integer}
