"""Integer MatMul paths for int8 Linear weights in an exported graph (standard operators only).

``MatMul(x, Transpose(W))`` and ``Gemm(x, W, transB=1)`` become
``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q^T, x_zp) -> Cast -> Mul(x_scale * w_scale)``
(``+ bias`` for Gemm): onnxruntime runs these with its integer GEMM (it fuses the chain into one
kernel). DynamicQuantizeLinear has one activation scale per call, which costs fidelity on transformers
with outlier channels; ``per_token=True`` first divides each row by its absmax (``ReduceMax(Abs(x))``),
so the one uint8 grid spans [-1, 1] for every row, and multiplies the result back by it: a scale per
token on the same fast uint8 x int8 GEMM. A SmoothQuant input scale becomes a ``Mul`` in front.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from bitladder.nn.base import QuantModule


def dynamic_int8_eligible(m: nn.Module) -> bool:
    qt = m.qweight
    return (isinstance(m, QuantModule) and type(m).__name__ == "QuantLinear" and qt.qtype.name == "int8"
            and qt.layout.granularity in ("channel", "tensor") and "act" not in m.qmeta
            and qt.mask is None and qt.zero_point is None)


def _row_absmax(proto, x: str, p: str) -> list:
    """Nodes computing ``x / r`` and ``r = max(absmax over the last axis, tiny)``: ``{p}__xn``, ``{p}__r``."""
    from onnx import helper, numpy_helper

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1e-30, np.float32), f"{p}__tiny"))
    if opset >= 18:
        proto.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), f"{p}__ax"))
        reduce = helper.make_node("ReduceMax", [f"{p}__abs", f"{p}__ax"], [f"{p}__rm"], keepdims=1)
    else:
        reduce = helper.make_node("ReduceMax", [f"{p}__abs"], [f"{p}__rm"], axes=[-1], keepdims=1)
    return [
        helper.make_node("Abs", [x], [f"{p}__abs"]), reduce,
        helper.make_node("Max", [f"{p}__rm", f"{p}__tiny"], [f"{p}__r"]),
        helper.make_node("Div", [x, f"{p}__r"], [f"{p}__xn"]),
    ]


def rewrite(proto, wname: str, m: QuantModule, per_token: bool = True) -> bool:
    """Replace the float path of weight ``wname`` by the integer one; False if the pattern is absent."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = list(proto.graph.node)
    users = [n for n in nodes if wname in n.input]
    if len(users) != 1:
        return False
    first = users[0]
    if first.op_type == "Transpose":
        mm = [n for n in nodes if first.output[0] in n.input]
        if len(mm) != 1 or mm[0].op_type != "MatMul":
            return False
        drop, x, out, bias = [first, mm[0]], mm[0].input[0], mm[0].output[0], None
    elif first.op_type == "Gemm" and first.input[1] == wname:
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        if attrs.get("transB") != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return False
        drop, x, out = [first], first.input[0], first.output[0]
        bias = first.input[2] if len(first.input) > 2 else None
    else:
        return False
    qt = m.qweight
    n, k = qt.shape
    codes = qt.codes().reshape(n, k).numpy().astype(np.int8)
    scale = qt.scale.float().numpy().reshape(-1)
    scale = np.broadcast_to(scale, (n,)).astype(np.float32)
    p = wname.replace(".", "_")
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(codes.T), f"{p}__qT"),
        numpy_helper.from_array(scale, f"{p}__ws"),
    ])
    new = []
    if "in_scale" in m.qmeta:  # SmoothQuant / AWQ: the stored weight expects x * in_scale
        proto.graph.initializer.append(numpy_helper.from_array(m.in_scale.float().numpy(), f"{p}__in"))
        new.append(helper.make_node("Mul", [x, f"{p}__in"], [f"{p}__xs_in"]))
        x = f"{p}__xs_in"
    if per_token:
        new += _row_absmax(proto, x, p)
        x = f"{p}__xn"
    y = out if bias is None and not per_token else f"{p}__y"
    new += [
        helper.make_node("DynamicQuantizeLinear", [x], [f"{p}__xq", f"{p}__xs", f"{p}__xz"]),
        helper.make_node("MatMulInteger", [f"{p}__xq", f"{p}__qT", f"{p}__xz"], [f"{p}__acc"]),
        helper.make_node("Cast", [f"{p}__acc"], [f"{p}__accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}__xs", f"{p}__ws"], [f"{p}__sc"]),
        helper.make_node("Mul", [f"{p}__accf", f"{p}__sc"], [y]),
    ]
    if per_token:
        new.append(helper.make_node("Mul", [y, f"{p}__r"], [out if bias is None else f"{p}__yr"]))
        y = f"{p}__yr"
    if bias is not None:
        new.append(helper.make_node("Add", [y, bias], [out]))
    at = nodes.index(drop[-1])
    kept = [nd for nd in nodes[:at] if nd not in drop] + new + [nd for nd in nodes[at + 1:] if nd not in drop]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return True
