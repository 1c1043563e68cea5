"""Integer MatMul paths for int8 Linear weights in an exported graph (standard operators only).

``MatMul(x, Transpose(W))`` and ``Gemm(x, W, transB=1)`` become an integer GEMM on the quantised
input: ``MatMulInteger(x_q, W_q^T + 128, x_zp, 128) -> Cast -> Mul(x_scale * w_scale)`` (``+ bias``),
which onnxruntime fuses into one kernel. The weight is stored as uint8 around 128 so that the GEMM is
u8 x u8, which no CPU computes through a saturating 16-bit pair sum (u8 x s8 does so without VNNI).

* per tensor (what onnxruntime's own quantize_dynamic does): ``DynamicQuantizeLinear(x)``, one
  scale per call, which costs fidelity on transformers whose tokens differ in range;
* per token: ``a = max(ReduceMax(x), -ReduceMin(x))`` per row; in units of its own ``a`` every row
  shares one asymmetric uint8 grid over [L, H] (the extreme normalised values of the call, as
  DynamicQuantizeLinear would pick for ``x / a``) and its one zero point, which is all onnxruntime's
  MatMulInteger takes. A blocked ``QuantizeLinear`` (opset 21: one block per row, step
  ``a (H - L) / 255``) quantises ``x`` in one pass; before opset 21, ``x / a`` and a plain one. The
  GEMM's input scale is the largest step (a runtime scalar, so onnxruntime still fuses the chain), and
  each row is multiplied by its own share of it. No float copy of ``|x|`` or ``x / a`` at opset 21.

* static (calibrated activations): ``QuantizeLinear`` with the layer's constant step and zero point, its
  own codes; no reduction at run time.

A SmoothQuant / AWQ input scale becomes a ``Mul`` in front. Layers that read the same tensor with the
same input scale (attention's query, key and value) share one preparation: the input is scaled,
measured and quantised once, and each layer only runs its GEMM.
"""

from __future__ import annotations

import hashlib

import numpy as np
from torch import nn

from bitladder.formats.qtypes import get_qtype
from bitladder.io.onnx_ranges import safe_weights
from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantLinear


def int8_gemm_eligible(m: nn.Module) -> bool:
    """Whether a layer's weight can be the integer operand of MatMulInteger (int8/int7 per channel)."""
    qt = getattr(m, "qweight", None)
    return (isinstance(m, QuantLinear) and qt.qtype.name in ("int8", "int7")
            and qt.layout.granularity in ("channel", "tensor") and qt.mask is None and qt.zero_point is None)


def dynamic_int8_eligible(m: nn.Module) -> bool:
    """Whether a layer can be exported as DynamicQuantizeLinear + MatMulInteger (no recorded activation format)."""
    return int8_gemm_eligible(m) and "act" not in m.qmeta


def const_init(proto, name: str, value) -> str:
    """The name of an initializer holding ``value``, added to the graph once."""
    from onnx import numpy_helper

    if not any(i.name == name for i in proto.graph.initializer):
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)


def _reduce(proto, op: str, x: str, out: str):
    from onnx import helper

    if _opset(proto) >= 18:
        return helper.make_node(op, [x, const_init(proto, "bl__last_axis", np.array([-1], np.int64))], [out],
                                keepdims=1)
    return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)


def static_grid(m: QuantModule) -> tuple[float, int, float, float] | None:
    """(step, uint8 zero point, lo, hi) of a layer's calibrated activation grid, None without one. The codes
    are the layer's own, moved to start at 0; a u8 x u8 GEMM takes all 256 on every CPU."""
    from bitladder.kernels.static_w8a8 import static_grid as grid

    act = m.qmeta.get("act")
    if act is None or act.get("dynamic") or act["qtype"] == "binary":
        return None
    return grid(float(m.act_scale), float(m.act_zero_point), act["qtype"], 255)


def _prepare(proto, x: str, m: QuantModule, mode: str, p: str) -> tuple[list, dict]:
    """Nodes quantising input ``x`` of layer ``m`` and the names they produce (``xq``, ``xz``, ``xs``,
    and ``r`` per token: the row scale that multiplies the GEMM result)."""
    from onnx import TensorProto, helper

    nodes = []
    if "in_scale" in m.qmeta:  # SmoothQuant / AWQ: the stored weight expects x * in_scale
        nodes.append(helper.make_node("Mul", [x, const_init(proto, f"{p}__in", m.in_scale.float().numpy())],
                                      [f"{p}__xs_in"]))
        x = f"{p}__xs_in"
    if mode == "static":
        nodes += quantize_static(proto, x, m, p)
        step, zp = static_grid(m)[:2]
        return nodes, {"xq": f"{p}__xq", "xs": const_init(proto, f"{p}__xstep", np.array(step, np.float32)),
                       "xz": const_init(proto, f"{p}__xzp", np.array(zp, np.uint8))}
    if mode == "tensor":
        nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [f"{p}__xq", f"{p}__xs", f"{p}__xz"]))
        return nodes, {"xq": f"{p}__xq", "xs": f"{p}__xs", "xz": f"{p}__xz"}

    def c(name: str, v: float) -> str:
        return const_init(proto, f"bl__{name}", np.array(v, np.float32))

    def op(kind: str, ins: list, out: str, **kw):
        nodes.append(helper.make_node(kind, ins, [f"{p}__{out}"], **kw))
        return f"{p}__{out}"

    hi, lo = f"{p}__hi", f"{p}__lo"
    nodes += [_reduce(proto, "ReduceMax", x, hi), _reduce(proto, "ReduceMin", x, lo)]
    amax = op("Max", [hi, op("Neg", [lo], "nlo"), c("tiny", 1e-30)], "amax")
    # one grid for all rows in units of each row's absmax, asymmetric like DynamicQuantizeLinear:
    # [L, H] = the extreme normalised values over the call (0 included), 255 steps, one zero point
    top = op("Max", [op("ReduceMax", [op("Div", [hi, amax], "nhi")], "H", keepdims=0), c("zero", 0.0)], "top")
    bot = op("Min", [op("ReduceMin", [op("Div", [lo, amax], "nlo2")], "L", keepdims=0), c("zero", 0.0)], "bot")
    unit = op("Max", [op("Div", [op("Sub", [top, bot], "span"), c("levels", 255.0)], "unit0"), c("tiny", 1e-30)],
              "unit")
    zp = op("Cast", [op("Clip", [op("Round", [op("Div", [op("Neg", [bot], "nbot"), unit], "zf")], "zr"),
                                 c("zero", 0.0), c("levels", 255.0)], "zc")], "zp", to=TensorProto.UINT8)
    step = op("Mul", [amax, unit], "step")
    if _opset(proto) >= 21:  # blocked QuantizeLinear: one block per row, its own step
        zrow = op("Add", [op("Mul", [amax, c("zero", 0.0)], "z0"), op("Cast", [zp], "zpf", to=TensorProto.FLOAT)],
                  "z1")
        op("QuantizeLinear", [x, step, op("Cast", [zrow], "zrow", to=TensorProto.UINT8)], "xq", axis=-1,
           block_size=int(m.qweight.shape[1]))
    else:
        op("QuantizeLinear", [op("Div", [x, amax], "xn"), unit, zp], "xq")
    # the GEMM's input scale is the largest row step (a runtime scalar, so onnxruntime still fuses
    # MatMulInteger -> Cast -> Mul into one kernel); each row is then multiplied by its share of it
    xs = op("ReduceMax", [step], "xs", keepdims=0)
    op("Div", [step, xs], "r")
    return nodes, {"xq": f"{p}__xq", "xs": xs, "xz": zp, "r": f"{p}__r"}


def quantize_static(proto, x: str, m: QuantModule, p: str) -> list:
    """``QuantizeLinear(x)`` to ``{p}__xq`` on the layer's calibrated grid, clipped first where the grid has
    fewer than 256 codes (QuantizeLinear itself clamps only to the uint8 range)."""
    from onnx import helper

    step, zp, lo, hi = static_grid(m)
    qt = get_qtype(m.qmeta["act"]["qtype"])
    nodes = []
    if qt.qmax - qt.qmin < 255:
        nodes.append(helper.make_node("Clip", [x, const_init(proto, f"{p}__xlo", np.array(lo, np.float32)),
                                               const_init(proto, f"{p}__xhi", np.array(hi, np.float32))],
                                      [f"{p}__xc"]))
        x = f"{p}__xc"
    nodes.append(helper.make_node("QuantizeLinear", [x, const_init(proto, f"{p}__xstep", np.array(step, np.float32)),
                                                     const_init(proto, f"{p}__xzp", np.array(zp, np.uint8))],
                                  [f"{p}__xq"]))
    return nodes


def match_linear(nodes: list, wname: str):
    """(nodes to drop, input, output, bias) of the float path using weight ``wname``, or None."""
    from onnx import helper

    users = [n for n in nodes if wname in n.input]
    if len(users) != 1:
        return None
    first = users[0]
    if first.op_type == "Transpose":
        mm = [n for n in nodes if first.output[0] in n.input]
        if len(mm) != 1 or mm[0].op_type != "MatMul":
            return None
        return [first, mm[0]], mm[0].input[0], mm[0].output[0], None
    if first.op_type == "Gemm" and first.input[1] == wname:
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        if attrs.get("transB") != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        return [first], first.input[0], first.output[0], (first.input[2] if len(first.input) > 2 else None)
    return None


def replace_linear(proto, nodes: list, found, p: str, m: QuantModule, product, first: list | None = None) -> None:
    """Put ``first`` (nodes) and ``product(x, y)`` (a node computing the layer's output ``y`` from its input
    ``x``) where the float path ``found`` (:func:`match_linear`) was: the layer's input scale (SmoothQuant /
    AWQ) as a Mul in front, a Gemm's bias as an Add after."""
    from onnx import helper

    drop, x, out, bias = found
    new = list(first or [])
    if "in_scale" in m.qmeta:
        new.append(helper.make_node("Mul", [x, const_init(proto, f"{p}__in", m.in_scale.float().numpy())],
                                    [f"{p}__xin"]))
        x = f"{p}__xin"
    y = out if bias is None else f"{p}__y"
    new.append(product(x, y))
    if bias is not None:
        new.append(helper.make_node("Add", [y, bias], [out]))
    at = nodes.index(drop[-1])
    kept = [nd for nd in nodes[:at] if nd not in drop] + new + [nd for nd in nodes[at:] if nd not in drop]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def rewrite(proto, wname: str, m: QuantModule, mode: str = "token", shared: dict | None = None) -> bool:
    """Replace the float path of weight ``wname`` by the integer one; False if the pattern is absent.

    ``mode``: "token" or "tensor" (dynamic activations) or "static" (the layer's calibrated grid).
    ``shared`` (one dict per export) remembers each prepared input so that sibling layers reuse it.
    """
    per_token = mode == "token"
    from onnx import TensorProto, helper, numpy_helper

    nodes = list(proto.graph.node)
    found = match_linear(nodes, wname)
    if found is None:
        return False
    drop, x, out, bias = found
    qt = m.qweight
    n, k = qt.shape
    # int8 codes become uint8 around 128 (a u8 x u8 GEMM); codes within +-64 (int7) stay int8, a u8 x s8 GEMM
    # whose pair sums provably fit 16 bits: both exact on every CPU (``onnx_ranges``)
    codes, wzp = safe_weights(qt.codes().reshape(n, k).numpy().astype(np.int8))
    scale = np.broadcast_to(qt.scale.float().numpy().reshape(-1), (n,)).astype(np.float32)
    p = wname.replace(".", "_")
    proto.graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(codes.T), f"{p}__qT"),
                                    numpy_helper.from_array(scale, f"{p}__ws")])
    zp_name = const_init(proto, f"bl__w_zp_{wzp.dtype}", wzp)
    in_key = hashlib.sha1(m.in_scale.float().numpy().tobytes()).hexdigest() if "in_scale" in m.qmeta else ""
    key = (x, in_key, mode, static_grid(m) if mode == "static" else None)
    shared = {} if shared is None else shared
    prep = []
    if key not in shared:
        prep, shared[key] = _prepare(proto, x, m, mode, p)
    q = shared[key]
    y = out if bias is None and not per_token else f"{p}__y"
    new = [
        helper.make_node("MatMulInteger", [q["xq"], f"{p}__qT", q["xz"], zp_name], [f"{p}__acc"]),
        helper.make_node("Cast", [f"{p}__acc"], [f"{p}__accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [q["xs"], f"{p}__ws"], [f"{p}__sc"]),
        helper.make_node("Mul", [f"{p}__accf", f"{p}__sc"], [y]),
    ]
    if per_token:
        new.append(helper.make_node("Mul", [y, q["r"]], [out if bias is None else f"{p}__yr"]))
        y = f"{p}__yr"
    if bias is not None:
        new.append(helper.make_node("Add", [y, bias], [out]))
    # the preparation goes right after the node producing x (before every sibling), the GEMM in place
    made = [i for i, nd in enumerate(nodes) if x in nd.output]
    at_prep = made[0] + 1 if made else 0
    at = nodes.index(drop[-1])
    kept = []
    for i, nd in enumerate(nodes):
        if i == at_prep:
            kept += prep
        if i == at:
            kept += new
        if nd not in drop:
            kept.append(nd)
    if at_prep >= len(nodes):
        kept += prep
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    if per_token:
        _keep_gelu_unfused(proto, out)
    return True


def _keep_gelu_unfused(proto, out: str) -> None:
    """A 1-D bias added to ``out`` right before a Gelu becomes (1, N): the same sum, but onnxruntime then
    keeps Add and Gelu rather than fusing them into BiasGelu, which ran slower with the same outputs
    (measured: docs/DESIGN.md, 'Per-token W8A8 in ONNX'). The per-tensor
    path does not need it: there the bias goes inside onnxruntime's DynamicQuantizeMatMul."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    made = [n for n in proto.graph.node if out in n.output and n.op_type == "Add"]  # ours, after a Gemm
    users = [n for n in proto.graph.node if out in n.input]  # the exporter's, after a MatMul
    adds = made or (users if len(users) == 1 and users[0].op_type == "Add" else [])
    if not adds:
        return
    add = adds[0]
    readers = [n.op_type for n in proto.graph.node if add.output[0] in n.input]
    if not readers or any(t != "Gelu" for t in readers):  # opsets below 20 spell Gelu out with Erf: left alone
        return
    for j, name in enumerate(add.input):
        if name in inits and len(inits[name].dims) == 1:
            add.input[j] = const_init(proto, f"{name}__row", numpy_helper.to_array(inits[name]).reshape(1, -1))
            if not any(name in n.input for n in proto.graph.node):  # no dead copy of the bias in the file
                proto.graph.initializer.remove(inits[name])


def qdq_input(proto, wname: str, m: QuantModule) -> bool:
    """QuantizeLinear -> DequantizeLinear on the calibrated grid in front of the node reading weight ``wname``
    (through its Transpose, if any), after the layer's input scale; False if no such node reads it."""
    from onnx import helper

    nodes = list(proto.graph.node)
    users = [n for n in nodes if wname in n.input]
    if len(users) == 1 and users[0].op_type == "Transpose":
        users = [n for n in nodes if users[0].output[0] in n.input]
    if len(users) != 1 or users[0].op_type not in ("MatMul", "Gemm", "Conv") or users[0].input[0] == wname:
        return False
    target, p = users[0], wname.replace(".", "_")
    x, new = target.input[0], []
    if "in_scale" in m.qmeta:
        shape = [1] * len(m.qweight.shape)
        shape[m.in_axis if target.op_type == "Conv" else 0] = -1
        scale = m.in_scale.float().numpy().reshape(shape if target.op_type == "Conv" else -1)
        new.append(helper.make_node("Mul", [x, const_init(proto, f"{p}__in", scale)], [f"{p}__xs_in"]))
        x = f"{p}__xs_in"
    new += quantize_static(proto, x, m, p)
    new.append(helper.make_node("DequantizeLinear", [f"{p}__xq", f"{p}__xstep", f"{p}__xzp"], [f"{p}__xdq"]))
    target.input[0] = f"{p}__xdq"
    at = nodes.index(target)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[:at] + new + nodes[at:])
    return True
