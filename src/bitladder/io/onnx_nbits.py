"""onnxruntime's ``com.microsoft.MatMulNBits`` for low-bit Linear weights in an exported graph
(``export_onnx(..., weights="matmulnbits")``).

``MatMul(x, Transpose(W))`` / ``Gemm(x, W, transB=1)`` of a layer whose codes have 4 bits or fewer
(int4, int3, int2, ternary, binary; symmetric or with zero points; one scale per row or groups of
16-256) becomes ``MatMulNBits(x, B, S[, Z])`` with ``accuracy_level=0``: fp32 activations, the 4-bit
blocks dequantised inside onnxruntime's GEMM, so the file keeps the weight-only numerics of the
standard ``DequantizeLinear`` export but does not dequantise every weight on every call (MiniLM W4 at
one sentence: docs/results). Narrower codes are widened to 4-bit blocks, the width with a fast fp32
path. The operator is onnxruntime's own (the one its quantiser writes); other runtimes need the
standard export. A SmoothQuant / AWQ input scale becomes a ``Mul`` in front, the bias an ``Add``.
"""

from __future__ import annotations

from torch import nn

from bitladder.io.onnx_dynamic import match_linear, replace_linear
from bitladder.kernels.onnx_nbits import OrtNBitsFp32Kernel, integer_codes, nbits_initializers, nbits_parts
from bitladder.nn.layers import QuantLinear

BITS = 4  # the MatMulNBits width with a fast fp32-activation path


def nbits_eligible(m: nn.Module) -> bool:
    """Whether a layer can be exported as MatMulNBits: a Linear with integer codes of at most 4 bits, one
    scale per row or groups MatMulNBits takes, no activation quantisation and no sparsity mask."""
    qt = getattr(m, "qweight", None)
    return (isinstance(m, QuantLinear) and integer_codes(qt) and qt.qtype.rules.width(qt.qtype) <= BITS
            and "act" not in m.qmeta and qt.mask is None and OrtNBitsFp32Kernel.group_ok(qt))


def rewrite_nbits(proto, wname: str, m: QuantLinear) -> bool:
    """Replace the float path of weight ``wname`` by MatMulNBits; False if the MatMul pattern is absent."""
    from onnx import helper

    nodes = list(proto.graph.node)
    found = match_linear(nodes, wname)
    if found is None:
        return False
    qt = m.qweight
    n, k = qt.shape
    p = wname.replace(".", "_")
    u, scale, zp, block = nbits_parts(qt, BITS, OrtNBitsFp32Kernel.groups)
    inits, names = nbits_initializers(u, scale, zp, BITS, block, prefix=f"{p}__nb")
    proto.graph.initializer.extend(inits)
    replace_linear(proto, nodes, found, p, m, lambda x, y: helper.make_node(
        "MatMulNBits", [x, *names], [y], domain="com.microsoft", K=k, N=n, bits=BITS, block_size=block,
        accuracy_level=0))
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True

