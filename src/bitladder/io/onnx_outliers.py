"""Outlier channels in an exported graph, recomputed instead of gathered.

A layer with ``Act(outliers=k)`` reads its ``k`` wide input channels with a Gather beside its integer GEMM
(:mod:`bitladder.nn.outliers`). When that input is an elementwise activation of a Linear (an FFN's GELU
output), the Gather makes the activation's output feed two nodes, and OpenVINO then runs the quantiser of
the main path as a pass of its own instead of fusing it into the activation. :func:`recompute_outlier_inputs`
computes the ``k`` channels a second time from the producer's input instead: the producer's weight rows
and bias entries for those channels (the same stored codes and scales), its activation, no Gather. The
values are the same products, and the activation's output has one reader again (measured on MiniLM in
OpenVINO: docs/results/notes.md, 'Outlier channels recomputed').
"""

from __future__ import annotations

import numpy as np

#: one output element from one input element: a channel subset of the input gives that subset of the output
ELEMENTWISE = ("Gelu", "Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Softplus", "HardSwish", "Mish")


def _rows(init, idx: np.ndarray, n: int, name: str):
    """Initializer ``init`` restricted to rows ``idx`` where its first axis has one entry per row of ``n`` (a
    weight matrix, per-row scales, a bias); a scalar as it is; None otherwise."""
    from onnx import numpy_helper

    a = numpy_helper.to_array(init)
    if a.size == 1 and a.ndim <= 1:
        return numpy_helper.from_array(a, name)
    if a.ndim in (1, 2) and a.shape[0] == n:
        return numpy_helper.from_array(np.ascontiguousarray(a[idx]), name)
    return None


def _source(nodes, inits, w: str):
    """(weight parts by role: "w" codes or floats, "s" scale, "z" zero point; True if dequantised) of a weight
    tensor ``w`` (N, K) that is an initializer or a per-row DequantizeLinear of initializers; None otherwise."""
    from onnx import helper

    if w in inits:
        return ({"w": inits[w]}, False) if len(inits[w].dims) == 2 else None
    dq = [n for n in nodes if w in n.output]
    if len(dq) != 1 or dq[0].op_type != "DequantizeLinear" or not all(i in inits for i in dq[0].input if i):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in dq[0].attribute}
    if attrs.get("axis", 1) != 0 or "block_size" in attrs or len(inits[dq[0].input[0]].dims) != 2:
        return None
    return dict(zip(("w", "s", "z"), (inits[i] for i in dq[0].input if i))), True


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _match(nodes, inits, gather):
    """The producer chain of a Gather of outlier channels: (activation node, producer op, its input, weight parts,
    dequantised?, bias initializer or None), or None where the pattern differs. The producer is
    ``Gemm(x, W, b, transB=1)`` or ``MatMul(x, Transpose(W))`` with an optional bias Add."""
    if _attrs(gather).get("axis", 0) != -1 or gather.input[1] not in inits or len(inits[gather.input[1]].dims) != 1:
        return None
    act = [n for n in nodes if gather.input[0] in n.output]
    if len(act) != 1 or act[0].op_type not in ELEMENTWISE or len(act[0].input) != 1:
        return None
    src = [n for n in nodes if act[0].input[0] in n.output]
    if len(src) == 1 and src[0].op_type == "Gemm":
        g = _attrs(src[0])
        bias = src[0].input[2] if len(src[0].input) > 2 and src[0].input[2] else None
        if (g.get("transB") != 1 or g.get("transA", 0) or g.get("alpha", 1.0) != 1.0 or g.get("beta", 1.0) != 1.0
                or (bias is not None and (bias not in inits or len(inits[bias].dims) != 1))):
            return None
        found = _source(nodes, inits, src[0].input[1])
        return None if found is None else (act[0], "Gemm", src[0].input[0], *found, bias and inits[bias])
    bias = None
    if len(src) == 1 and src[0].op_type == "Add":
        consts = [i for i in src[0].input if i in inits and len(inits[i].dims) == 1]
        others = [i for i in src[0].input if i not in consts]
        if len(consts) != 1 or len(others) != 1:
            return None
        bias = inits[consts[0]]
        src = [n for n in nodes if others[0] in n.output]
    if len(src) != 1 or src[0].op_type != "MatMul":
        return None
    tr = [n for n in nodes if src[0].input[1] in n.output]
    if len(tr) != 1 or tr[0].op_type != "Transpose" or list(_attrs(tr[0]).get("perm", [1, 0])) != [1, 0]:
        return None
    found = _source(nodes, inits, tr[0].input[0])
    return None if found is None else (act[0], "MatMul", src[0].input[0], *found, bias)


def recompute_outlier_inputs(proto) -> int:
    """Replace each Gather of outlier channels whose input is ``act(x @ W.T + b)`` by ``act(x @ W[idx].T +
    b[idx])`` (:mod:`bitladder.io.onnx_outliers`); the number replaced."""
    from onnx import helper, numpy_helper

    done = 0
    for gather in [n for n in proto.graph.node if n.op_type == "Gather"]:
        nodes, inits = list(proto.graph.node), {i.name: i for i in proto.graph.initializer}
        found = _match(nodes, inits, gather)
        if found is None:
            continue
        act, op, x, parts, dequantised, bias = found
        idx = numpy_helper.to_array(inits[gather.input[1]]).astype(np.int64)
        n = int(parts["w"].dims[0])
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            continue
        p = gather.output[0].replace("/", "_").replace(".", "_") + "__re"
        new_inits = {role: _rows(t, idx, n, f"{p}_{role}") for role, t in parts.items()}
        if bias is not None:
            new_inits["b"] = _rows(bias, idx, n, f"{p}_b")
        if any(v is None for v in new_inits.values()):
            continue
        new, w = [], f"{p}_w"
        if dequantised:
            ins = [f"{p}_{r}" for r in ("w", "s", "z") if r in new_inits]
            new.append(helper.make_node("DequantizeLinear", ins, [f"{p}_wf"], axis=0))
            w = f"{p}_wf"
        h = f"{p}_h"
        if op == "Gemm":
            new.append(helper.make_node("Gemm", [x, w] + ([f"{p}_b"] if bias is not None else []), [h], transB=1))
        else:
            new.append(helper.make_node("Transpose", [w], [f"{p}_wt"], perm=[1, 0]))
            new.append(helper.make_node("MatMul", [x, f"{p}_wt"], [h]))
            if bias is not None:
                new.append(helper.make_node("Add", [h, f"{p}_b"], [f"{p}_hb"]))
                h = f"{p}_hb"
        new.append(helper.make_node(act.op_type, [h], [gather.output[0]], domain=act.domain or None, **_attrs(act)))
        proto.graph.initializer.extend(new_inits.values())
        at = nodes.index(gather)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes[:at] + new + nodes[at + 1:])
        if not any(gather.input[1] in nd.input for nd in proto.graph.node):  # no dead copy of the indices
            proto.graph.initializer.remove(inits[gather.input[1]])
        done += 1
    return done
