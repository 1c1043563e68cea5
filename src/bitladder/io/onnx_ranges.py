"""Prove from operand ranges that no integer GEMM in an ONNX graph can saturate, on any CPU.

An exported file runs on CPUs its exporter never saw. x86 CPUs without VNNI multiply uint8 by int8
with ``vpmaddubsw``, which adds each pair of products in a signed 16-bit lane and saturates there
(onnxruntime's MLAS, fbgemm and oneDNN all use it): a u8 x s8 GEMM is exact on every CPU only when
``2 * max|a| * max|b| <= 32767``. u8 x u8 and s8 x s8 never take that instruction (it needs one
operand of each signedness), so they widen to 16 bits first and cannot saturate.

The check is static and host-independent, so a VNNI machine's test suite catches a graph that would be
wrong elsewhere. An operand's range is its initializer's values, the constant bounds of a ``Clip`` that
produced it, or else its type's whole range.
"""

from __future__ import annotations

import numpy as np

from bitladder.kernels.fbgemm_w8a8 import I16_MAX
#: integer GEMM ops: (input index of A, input index of B)
GEMMS = {"MatMulInteger": (0, 1), "ConvInteger": (0, 1), "DynamicQuantizeMatMul": (None, 1),
         "MatMulIntegerToFloat": (0, 1), "QLinearMatMul": (0, 3), "QLinearConv": (0, 3)}
_TYPE_RANGE = {2: (0, 255), 3: (-128, 127)}  # onnx TensorProto.UINT8, INT8


def _elem_types(proto) -> dict[str, int]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


def _range(proto, name: str, types: dict[str, int], inits: dict) -> tuple[int, int] | None:
    """(min, max) the tensor ``name`` can hold, or None when it is not an 8-bit integer tensor."""
    from onnx import numpy_helper

    if name in inits:
        v = numpy_helper.to_array(inits[name])
        return (int(v.min()), int(v.max())) if v.size else (0, 0)
    full = _TYPE_RANGE.get(types.get(name, 0))
    if full is None:
        return None
    made = [n for n in proto.graph.node if name in n.output]
    if made and made[0].op_type == "Clip" and all(i in inits for i in made[0].input[1:3]) and len(made[0].input) == 3:
        lo, hi = (int(numpy_helper.to_array(inits[i])) for i in made[0].input[1:3])
        return max(lo, full[0]), min(hi, full[1])
    return full


#: float ops that runtimes turn into integer GEMMs when both inputs are dequantised integers (Q/DQ form)
QDQ_GEMMS = ("MatMul", "Gemm", "Conv")
#: ops between a DequantizeLinear and the GEMM that move values without changing them
_MOVES = ("Transpose", "Reshape")


def _dequantized(made: dict, name: str) -> str | None:
    """The integer tensor a DequantizeLinear turns into ``name`` (through Transpose / Reshape), or None;
    ``made``: each tensor's producing node."""
    while name in made:
        node = made[name]
        if node.op_type == "DequantizeLinear":
            return node.input[0]
        if node.op_type not in _MOVES:
            return None
        name = node.input[0]
    return None


def _operands(proto):
    """(op label, A, B) for each integer GEMM (A None: quantised by the op itself): explicit integer ops, and float
    MatMul / Gemm / Conv whose inputs are both dequantised integers (OpenVINO, TensorRT and onnxruntime's
    Q/DQ fusion run those as integer GEMMs on the codes)."""
    made = {out: n for n in proto.graph.node for out in n.output}  # one pass, not one per GEMM input
    for node in proto.graph.node:
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.op_type in GEMMS:
            ia, ib = GEMMS[node.op_type]
            # DynamicQuantizeMatMul quantises its float A to uint8 over the whole range itself
            yield label, None if ia is None else node.input[ia], node.input[ib]
        elif node.op_type in QDQ_GEMMS and len(node.input) >= 2:
            a, b = (_dequantized(made, i) for i in node.input[:2])
            if a is not None and b is not None:
                yield f"Q/DQ {label}", a, b


def gemm_problems(proto) -> list[str]:
    """One sentence per integer GEMM whose u8 x s8 pairs can exceed a signed 16-bit sum."""
    types = _elem_types(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    problems = []
    for label, a, b in _operands(proto):
        ra = (0, 255) if a is None else _range(proto, a, types, inits)
        rb = _range(proto, b, types, inits)
        if ra is None or rb is None:
            continue
        a_signed, b_signed = ra[0] < 0 or (a is not None and types.get(a) == 3), rb[0] < 0 or types.get(b) == 3
        if a_signed == b_signed:
            continue  # u8 x u8 / s8 x s8: widened to 16 bits, no pairwise 16-bit sum
        amax, bmax = max(abs(ra[0]), abs(ra[1])), max(abs(rb[0]), abs(rb[1]))
        if 2 * amax * bmax > I16_MAX:
            problems.append(f"{label}: operands in [{ra[0]}, {ra[1]}] x "
                            f"[{rb[0]}, {rb[1]}] reach 2*{amax}*{bmax} = {2 * amax * bmax} > {I16_MAX} in one "
                            "16-bit pair sum on CPUs without VNNI (vpmaddubsw saturates)")
    return problems


def integer_gemms(proto) -> int:
    """How many integer GEMMs the graph holds, explicit or Q/DQ (what :func:`gemm_problems` looked at)."""
    return sum(1 for _ in _operands(proto))


def as_uint8_weights(codes: np.ndarray) -> tuple[np.ndarray, np.uint8]:
    """Signed int8 codes as uint8 with zero point 128: the same products, a u8 x u8 GEMM."""
    return (codes.astype(np.int16) + 128).astype(np.uint8), np.uint8(128)


def safe_weights(codes: np.ndarray) -> tuple[np.ndarray, np.integer]:
    """(weights, zero point) for a GEMM against full-range uint8 activations that cannot saturate: int8
    codes as they are where ``2 * 255 * max|code| <= 32767`` (7-bit codes: the faster u8 x s8 GEMM), else
    :func:`as_uint8_weights`."""
    if 2 * 255 * int(np.abs(codes.astype(np.int16)).max(initial=0)) <= I16_MAX:
        return codes, np.int8(0)
    return as_uint8_weights(codes)
