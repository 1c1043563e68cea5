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

import importlib.util
import math

import numpy as np
import torch

from bitladder.kernels.base import KernelUnsupported, LinearKernel, weight_parts
from bitladder.kernels.packrows import pack_rows as _pack
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

#: weights below this many 8-bit codes leave 3-16 rows to fbgemm's fp16 codes (OrtNBitsKernel.rows)
SMALL_8BIT = 1 << 20
# onnx and onnxruntime load at first use (about 1.3 s and 40 MB at import)
HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def nbits_arrays(u: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, block: int) -> dict:
    """MatMulNBits' weight inputs by name: ``B`` the codes in blocks, ``S`` the scales, ``Z`` the packed zero
    points where there are any.

    u: (N, K) unsigned codes, scale: (N, nblocks) fp32, zp: (N, nblocks) ints or None.
    """
    n, k = u.shape
    nb = scale.shape[1]
    up = u
    if nb * block != k:  # pad the last block with zero codes (a copy only where there is padding)
        up = np.zeros((n, nb * block), np.uint8)
        up[:, :k] = u
    out = {"B": np.ascontiguousarray(_pack(up.reshape(n, nb, block), bits)),
           "S": np.ascontiguousarray(scale.reshape(-1), dtype=np.float32)}
    if zp is not None:
        out["Z"] = np.ascontiguousarray(_pack(zp, bits))
    return out


def nbits_initializers(u: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, block: int,
                       prefix: str = "") -> tuple[list, list[str]]:
    """:func:`nbits_arrays` as graph initializers named ``prefix`` + name, and their names in input order."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(a, prefix + name) for name, a in nbits_arrays(u, scale, zp, bits, block).items()]
    return inits, [i.name for i in inits]


def build_session(u: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, block: int,
                  threads: int, accuracy_level: int = 4) -> tuple["ort.InferenceSession", list]:
    """A one-node session of :func:`nbits_arrays`' weight, and what it reads from (the caller keeps it alive).

    ``accuracy_level`` 4 quantises activations to int8 per block; 0 keeps them fp32 (exact weight-only
    numerics; onnxruntime has a fast fp32 path for 4-bit weights only). The weight reaches onnxruntime as
    external initializers over these arrays: no protobuf copies of it (an LM head's build took 360 MB above
    its stored bytes with them).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, k = u.shape
    arrays = nbits_arrays(u, scale, zp, bits, block)
    inits = []
    for name, a in arrays.items():  # declared external: their bytes come from the OrtValues below
        proto = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(a.dtype), dims=a.shape,
                            data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "bitladder-memory"), ("offset", "0"), ("length", str(a.nbytes))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        inits.append(proto)
    node = helper.make_node("MatMulNBits", ["x", *arrays], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
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
    # no arena: each layer's session would keep its largest output (rows x N x 4 bytes) for good; measured the same
    # speed at 1-300 rows on 4096^2 and 5 MB less per layer after 300 rows (docs/DESIGN.md, 'Every CPU')
    so.enable_cpu_mem_arena = False
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
    so.add_external_initializers(list(arrays), values)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]), [arrays, values, so]


_ORT_BITS = {8: 8, 7: 8, 6: 8, 5: 8, 4: 4, 3: 4, 2: 2, 1: 2}  # code width -> the MatMulNBits width holding it


def nbits_parts(qt: QuantizedTensor, bits: int, groups: tuple[int, ...]):
    """(u, scale, zero points or None, block) of a weight stored at ``bits`` in MatMulNBits' blocks: u (N, K)
    uint8 codes with onnxruntime's default zero point ``2**(bits-1)`` for signed formats; one scale per row
    is replicated over blocks of 128."""
    _, scale, zp, g = weight_parts(qt, None)
    n, k = qt.shape
    if scale.shape[1] > 1:
        if g not in groups:
            raise KernelUnsupported(f"MatMulNBits needs a group in {groups}, got {g}")
        block = g
    else:  # one scale per row: replicate it over blocks of 128
        block = 128
        nb = math.ceil(k / block)
        scale = scale[:, :1].expand(n, nb).contiguous()
        zp = None if zp is None else zp[:, :1].expand(n, nb).contiguous()
    u = qt.unsigned_codes().reshape(n, k).numpy()  # a fresh uint8 array: changed in place below
    if not qt.qtype.signed:
        return u, scale.numpy(), zp.numpy().astype(np.uint8), block
    mult, off = qt.qtype.rules.affine(qt.qtype)  # code = mult * u - off; stored: code + 2**(bits-1), in 0..2**bits-1
    if mult != 1:
        u *= np.uint8(mult)
    if 2 ** (bits - 1) - off:
        u += np.uint8(2 ** (bits - 1) - off)
    return u, scale.numpy(), None, block


def integer_codes(qt: QuantizedTensor, fractional_zero_points: bool = False) -> bool:
    """Integer-like codes (int, uint, ternary, binary) with integer zero points (or fractional ones, HQQ's, where
    the caller takes them), output channel on axis 0."""
    zp = qt.zero_point
    return (qt.qtype.rules.integer_codes and len(qt.shape) == 2
            and (qt.layout.granularity == "tensor" or qt.layout.axis % 2 == 0)
            and (zp is None or fractional_zero_points or not zp.is_floating_point()))


@register
class OrtNBitsKernel(LinearKernel):
    """onnxruntime MatMulNBits, W{2,4,8} with int8 activations per block (its MLAS int8 path)."""

    name = "ort-nbits"
    accuracy_level = 4
    groups = (16, 32, 64, 128, 256)
    auto_rows = (1, 16)  # above, float activations: int8 ones cost fidelity (docs/DESIGN.md, 'Exact weight-only')
    rank = 10

    @staticmethod
    def _bits(q) -> int | None:
        return _ORT_BITS.get(q.rules.width(q))

    @classmethod
    def rows(cls, cpu, qt: QuantizedTensor | None = None):
        """``auto_rows``, but for a small layer of 8-bit codes with one scale per output (below a 1024² weight)
        on an AVX2 CPU: there fbgemm's fp16 codes ran faster at 3-16 rows, with exact float activations (notes.md,
        'Eight-bit codes at a few rows')."""
        if (qt is not None and cpu.has("avx2") and qt.qtype.rules.width(qt.qtype) > 4 and qt.numel < SMALL_8BIT
                and qt.layout.granularity in ("channel", "tensor")):
            return None
        return cls.auto_rows

    @classmethod
    def installed(cls) -> bool:
        return HAVE_ORT

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return integer_codes(qt) and cls._bits(qt.qtype) is not None and cls.group_ok(qt)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, threads: int | None = None) -> "OrtNBitsKernel":
        if not cls.installed():
            raise KernelUnsupported("onnx / onnxruntime are not installed")
        bits = cls._bits(qt.qtype)
        if bits is None:
            raise KernelUnsupported(f"no MatMulNBits width for {qt.qtype.name}")
        n, k = qt.shape
        u, scale, zarr, block = nbits_parts(qt, bits, cls.groups)
        self = cls()
        self.n, self.k = n, k
        self.bits = bits
        self.name = f"ort-w{bits}a8" if cls.accuracy_level else f"ort-w{bits}-fp32"
        self._sess, self._feeds = build_session(u, scale, zarr, bits, block,
                                                threads or torch.get_num_threads(), cls.accuracy_level)
        self._bytes = n * math.ceil(k / block) * (block * bits // 8 + 4 + (0 if zarr is None else 1))
        return self

    def _run(self, x):
        return torch.from_numpy(self._sess.run(None, {"x": x.numpy()})[0])

    @property
    def nbytes(self) -> int:
        """Bytes the MatMulNBits initializers hold."""
        return self._bytes


@register
class OrtNBitsFp32Kernel(OrtNBitsKernel):
    """MatMulNBits with fp32 activations (accuracy_level 0): exact weight-only numerics, the 4-bit blocks
    dequantised inside the GEMM. Codes of 4 bits or fewer are stored as 4-bit blocks, the only width with
    a fast fp32 path."""

    name = "ort-nbits-fp32"
    accuracy_level = 0
    auto_rows = (17, 512)  # above 512 rows dequantise + fp32 GEMM amortises
    rank = 50

    @staticmethod
    def _bits(q) -> int | None:
        return 4 if q.rules.width(q) <= 4 else None



