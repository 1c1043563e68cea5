"""The weight-only reference a float export holds: a copy of the model on the dequantise + fp32 kernel.

Where the C kernels run, auto quantises activations of 1- to 4-bit layers to int8 per block at every row count,
so a file that stores the dequantised weights (HF, GGUF, ONNX DequantizeLinear) is compared with this, not with
whatever kernel auto picked."""

import copy

from bitladder.nn.base import QuantModule


def exact(model):
    """A deep copy of ``model`` whose quantised layers all compute dequantise + ``F.linear``."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, QuantModule):
            m.set_kernel_policy("dequant-fp32")
    return out


def exact_session(path):
    """onnxruntime on ``path`` keeping fp32 activations where it fuses a blocked DequantizeLinear -> MatMul into
    MatMulNBits (by default it rounds them to int8 per block there): the file's own arithmetic."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
