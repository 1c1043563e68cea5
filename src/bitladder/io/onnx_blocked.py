"""Blocked low-bit Linear weights written input-major: DequantizeLinear(axis=0) straight into the MatMul.

torch.onnx writes a Linear as ``MatMul(x, Transpose(W))``. With the codes stored (out, in), the blocked
DequantizeLinear feeds that Transpose, and onnxruntime keeps both: it dequantised every 4-bit weight of
MiniLM on every call (0.39-0.45x fp32 torch at one sentence). Stored (in, out) with the blocks along axis 0,
the DequantizeLinear output is the MatMul's second input itself, the standard pattern that onnxruntime fuses
into its MatMulNBits kernel and that OpenVINO reads as a compressed weight. The file keeps standard operators
and the same values. At its default (session option ``session.qdq_matmulnbits_accuracy_level`` = 4)
onnxruntime then rounds activations to int8 per block, as bitladder's own kernels do on small requests; "0"
keeps fp32 activations and the exact weight-only product.
"""

from __future__ import annotations

from torch import nn

from bitladder.io.onnx_dynamic import match_linear, replace_linear
from bitladder.io.onnx_weights import _integer
from bitladder.nn.layers import QuantLinear


def blocked_eligible(m: nn.Module) -> bool:
    """A Linear whose integer codes fit 4-bit storage, in blocks along its input, with no activation grid."""
    qt = getattr(m, "qweight", None)
    if not isinstance(m, QuantLinear) or qt.qtype.rules.onnx != "dequantize-linear" or qt.qtype.bits > 4:
        return False
    _, _, nb, _ = qt.layout.dims(qt.shape)
    return (qt.layout.granularity == "group" and nb > 1 and qt.layout.axis == 0 and "act" not in m.qmeta
            and (qt.zero_point is None or not qt.zero_point.is_floating_point()))


def rewrite_blocked(proto, wname: str, m: QuantLinear, opset: int) -> bool:
    """Replace the float path of weight ``wname`` by input-major DequantizeLinear -> MatMul (a SmoothQuant /
    AWQ input scale as a Mul on the input, a Gemm's bias as an Add); False if the pattern is absent."""
    from onnx import helper

    nodes = list(proto.graph.node)
    found = match_linear(nodes, wname)
    if found is None:
        return False
    p = wname.replace(".", "_")
    inits, dq = _integer(wname, m.qweight, f"{p}__kn", opset, k_major=True)
    proto.graph.initializer.extend(inits)
    replace_linear(proto, nodes, found, p, m, lambda x, y: helper.make_node("MatMul", [x, f"{p}__kn"], [y]), dq)
    return True
