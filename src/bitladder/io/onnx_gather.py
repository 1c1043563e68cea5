"""Quantised embedding tables in an exported graph: look rows up in the int8 codes, then dequantise
only those rows (``Gather(codes) -> Cast -> Mul(Gather(row scales))``), instead of dequantising the
whole table on every call. Standard operators only.
"""

from __future__ import annotations

import numpy as np

from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding


def gather_eligible(m: QuantModule) -> bool:
    """Whether an int8 embedding can be exported as a Gather of int8 rows (one scale per row or tensor)."""
    qt = m.qweight
    return (isinstance(m, QuantEmbedding) and qt.qtype.rules.byte_codes(qt.qtype)
            and qt.zero_point is None and qt.mask is None and "in_scale" not in m.qmeta
            and (qt.layout.granularity == "tensor" or (qt.layout.granularity == "channel" and qt.layout.axis == 0)))


def rewrite_gather(proto, wname: str, m: QuantModule) -> bool:
    """Make every ``Gather(wname, ids)`` read int8 rows; False if the table has another use."""
    from onnx import TensorProto, helper, numpy_helper

    users = [n for n in proto.graph.node if wname in n.input]
    if not users or any(n.op_type != "Gather" or n.input[0] != wname or
                        any(a.name == "axis" and a.i != 0 for a in n.attribute) for n in users):
        return False
    qt = m.qweight
    rows, width = qt.shape
    p = wname.replace(".", "_")
    codes = qt.codes().reshape(rows, width).numpy().astype(np.int8)
    scale = qt.scale.float().numpy().reshape(-1).astype(np.float32)
    per_row = qt.layout.granularity == "channel"
    proto.graph.initializer.extend([
        numpy_helper.from_array(codes, f"{p}__q8"),
        numpy_helper.from_array(scale.reshape(rows, 1) if per_row else scale.reshape(()), f"{p}__rs"),
    ])
    for i, g in enumerate(users):
        ids, out = g.input[1], g.output[0]
        new = [helper.make_node("Gather", [f"{p}__q8", ids], [f"{p}__g{i}"], axis=0),
               helper.make_node("Cast", [f"{p}__g{i}"], [f"{p}__gf{i}"], to=TensorProto.FLOAT)]
        if per_row:
            new += [helper.make_node("Gather", [f"{p}__rs", ids], [f"{p}__gs{i}"], axis=0),
                    helper.make_node("Mul", [f"{p}__gf{i}", f"{p}__gs{i}"], [out])]
        else:
            new.append(helper.make_node("Mul", [f"{p}__gf{i}", f"{p}__rs"], [out]))
        nodes = list(proto.graph.node)
        at = nodes.index(g)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes[:at] + new + nodes[at + 1:])
    return True
