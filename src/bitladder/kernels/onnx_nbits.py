"""onnxruntime's ``com.microsoft.MatMulNBits`` as a W{2,4,8}A8 kernel (its MLAS int8 path).

One single-node ONNX graph per layer, built in memory with the ``onnx`` helpers, the weight as an
initializer: ``B`` (N, nblocks, G*bits/8) uint8 (the FORMATS.md bit stream, each block padded on its
own), ``scales`` (N*nblocks) fp32 and, for asymmetric formats only, ``zero_points`` packed at
``bits`` per value; without them onnxruntime uses ``2**(bits-1)``, which is exactly our symmetric
offset. ``accuracy_level=4`` makes onnxruntime quantise the activation to int8 per block and use
integer dot products (AVX-512 VNNI / AVX2 where the CPU has them, portable code elsewhere);
``accuracy_level=0`` keeps fp32 activations and dequantises 4-bit blocks inside the GEMM.
"""

from __future__ import annotations

import numpy as np

from bitladder.kernels.packrows import pack_rows as _pack

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    HAVE_ORT = True
except ImportError:  # pragma: no cover - only where onnx/onnxruntime are absent
    HAVE_ORT = False


def build_session(u: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, block: int,
                  threads: int, accuracy_level: int = 4) -> "ort.InferenceSession":
    """u: (N, K) unsigned codes, scale: (N, nblocks) fp32, zp: (N, nblocks) ints or None.

    ``accuracy_level`` 4 quantises activations to int8 per block; 0 keeps them fp32 (exact weight-only
    numerics; onnxruntime has a fast fp32 path for 4-bit weights only).
    """
    n, k = u.shape
    nb = scale.shape[1]
    up = np.zeros((n, nb * block), np.uint8)
    up[:, :k] = u
    b = _pack(up.reshape(n, nb, block), bits)
    inits = [numpy_helper.from_array(np.ascontiguousarray(b), "B"),
             numpy_helper.from_array(np.ascontiguousarray(scale.reshape(-1), dtype=np.float32), "S")]
    inputs = ["x", "B", "S"]
    if zp is not None:
        inits.append(numpy_helper.from_array(_pack(zp, bits), "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "bitladder_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                              initializer=inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # no busy-waiting between calls: torch runs the ops around this layer on the same cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


