"""Quantised embedding tables in an exported graph: look rows up in the int8 codes, then dequantise
only those rows (``Gather(codes) -> Cast [-> Sub(Gather(row zero points))] -> Mul(Gather(row scales))``),
instead of dequantising the whole table on every call (for MiniLM's asymmetric word table, a third of a
sentence's time on onnxruntime: docs/results/notes.md, 'A whole suite in 24 GB'). The float subtraction of two
integer codes is exact, so the rows are those of ``(code - zero point) * scale``, as in torch. Standard
operators only.
"""

from __future__ import annotations

import numpy as np

from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding


def gather_eligible(m: QuantModule) -> bool:
    """Whether an 8-bit embedding can be exported as a Gather of byte rows (one scale, and zero point if any, per
    row or tensor)."""
    qt = m.qweight
    return (isinstance(m, QuantEmbedding) and qt.qtype.rules.byte_codes(qt.qtype)
            and qt.mask is None and "in_scale" not in m.qmeta
            and (qt.layout.granularity == "tensor" or (qt.layout.granularity == "channel" and qt.layout.axis == 0)))


def rewrite_gather(proto, wname: str, m: QuantModule) -> bool:
    """Make every ``Gather(wname, ids)`` read the 8-bit rows (int8, or uint8 for codes above 127); False if the
    table has another use."""
    from onnx import TensorProto, helper, numpy_helper

    users = [n for n in proto.graph.node if wname in n.input]
    if not users or any(n.op_type != "Gather" or n.input[0] != wname or
                        any(a.name == "axis" and a.i != 0 for a in n.attribute) for n in users):
        return False
    qt = m.qweight
    rows, width = qt.shape
    p = wname.replace(".", "_")
    values = qt.qtype.rules.decode(qt.codes(), qt.qtype).reshape(rows, width)  # what dequantisation subtracts from
    codes = values.numpy().astype(np.int8 if values.min() >= -128 and values.max() <= 127 else np.uint8)
    per_row = qt.layout.granularity == "channel"
    shape = (rows, 1) if per_row else ()
    tables = {"rs": qt.scale.float().numpy().astype(np.float32).reshape(shape)}
    zp = qt.zero_points()
    if zp is not None:
        tables["rz"] = zp.float().numpy().astype(np.float32).reshape(shape)
    proto.graph.initializer.extend([numpy_helper.from_array(codes, f"{p}__q8")]
                                   + [numpy_helper.from_array(v, f"{p}__{k}") for k, v in tables.items()])
    for i, g in enumerate(users):
        ids, out = g.input[1], g.output[0]
        new = [helper.make_node("Gather", [f"{p}__q8", ids], [f"{p}__g{i}"], axis=0),
               helper.make_node("Cast", [f"{p}__g{i}"], [f"{p}__gf{i}"], to=TensorProto.FLOAT)]
        row = {k: f"{p}__{k}" for k in tables}
        if per_row:  # the rows' own scales and zero points
            for k in tables:
                new.append(helper.make_node("Gather", [f"{p}__{k}", ids], [f"{p}__g{k}{i}"], axis=0))
                row[k] = f"{p}__g{k}{i}"
        v = f"{p}__gf{i}"
        if "rz" in row:
            new.append(helper.make_node("Sub", [v, row["rz"]], [f"{p}__gc{i}"]))
            v = f"{p}__gc{i}"
        new.append(helper.make_node("Mul", [v, row["rs"]], [out]))
        nodes = list(proto.graph.node)
        at = nodes.index(g)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes[:at] + new + nodes[at + 1:])
    return True
