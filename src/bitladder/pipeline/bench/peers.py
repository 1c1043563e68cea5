"""Peers of bitladder in ``bitladder bench --suite minilm``: OpenVINO (fp32 and NNCF int8) and torchao.

Each function takes the MiniLM :class:`~bitladder.zoo.spec.ModelSpec` (and, where files are written, a
folder for them) and returns an ``nn.Module`` called as ``module(**batch)`` that returns the float
embeddings, of the shape ``spec.model(**batch)`` returns. The peer packages are optional (the ``bench``
extra) and are imported inside the functions. OpenVINO runs on as many threads as torch
(``torch.get_num_threads()`` when the peer is built), so that its rows compare with torch's on equal terms.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitladder.kernels.cpu import current


def torch_ao_unavailable() -> str | None:
    """Why torch.ao's dynamic int8 Linear (``quantize_dynamic``) cannot run on this CPU, or None where it can.
    Without AVX2 torch has no fbgemm, and its oneDNN engine's dynamic Linear still calls fbgemm's AVX2
    ``FindMinMax``: an illegal instruction that ends the process (torch 2.13; found under an emulated Nehalem).
    The host's own features decide, whatever ``BITLADDER_CPU`` presents to bitladder's kernels."""
    if "avx2" in current({}).host_flags:
        return None
    return ("not run: torch's dynamic int8 Linear executes AVX2 code (fbgemm's FindMinMax, on its oneDNN engine) "
            "and would end the process on this CPU without AVX2")


class _OpenVINO(nn.Module):
    """A compiled OpenVINO model called like a torch model: ``module(**batch)`` -> float tensor.

    Batch entries the OpenVINO model has no input for are dropped. ``file_bytes`` is the size of the IR
    (``.xml`` + ``.bin``) it was compiled from.
    """

    def __init__(self, compiled, file_bytes: int | None = None) -> None:
        super().__init__()
        self.compiled = compiled
        self.names = [i.get_any_name() for i in compiled.inputs]
        self.file_bytes = file_bytes

    def forward(self, **batch) -> torch.Tensor:
        feed = {k: np.ascontiguousarray(batch[k].numpy()) for k in self.names}
        out = self.compiled(feed)[self.compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))


class _Explicit(nn.Module):
    """``spec.model`` with the inputs of ``spec.latency_batch`` as named parameters (for tracing)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**{k: batch[k] for k in self.names})


def _ov_model(spec):
    """``spec.model`` converted with ``openvino.convert_model`` (batch and sequence dims dynamic)."""
    import openvino as ov

    b = spec.latency_batch
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in b]
    with torch.no_grad():
        model = ov.convert_model(_Explicit(spec.model, names), example_input={k: b[k] for k in names},
                                 input=[(k, ov.PartialShape([-1, -1]), ov.Type.i64) for k in names])
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    return model


def _ov_compile(model, folder: Path, stem: str, compress_to_fp16: bool, snippets: bool = True) -> _OpenVINO:
    """Save ``model`` as IR under ``folder`` and compile the file for CPU (:func:`_ov_config`)."""
    import openvino as ov

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{stem}.xml"
    ov.save_model(model, xml, compress_to_fp16=compress_to_fp16)
    return _ov_load(xml, snippets)


def _ov_config(snippets: bool, dq_group: int | None = None) -> dict:
    """f32 inference precision (no bf16 even where the CPU has it), the ``LATENCY`` hint, torch's thread
    count; ``snippets=False`` turns off OpenVINO's fused subgraphs (its attention kernel among them).
    ``dq_group``: OpenVINO's dynamic quantisation of the activations of MatMuls whose weights are stored
    compressed (int8 / int4 DequantizeLinear), int8 per group of that many inputs; 0 turns it off. None leaves
    OpenVINO's default, which is on, in groups of 32 (2026.4): a weight-only file then runs W8A8 there."""
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY"}
    if dq_group is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(dq_group)
    return config if snippets else config | {"SNIPPETS_MODE": "DISABLE"}


def _ov_load(path: Path, snippets: bool = True, dq_group: int | None = None) -> _OpenVINO:
    """An IR (``.xml``) or ONNX file compiled for CPU with :func:`_ov_config`."""
    import openvino as ov

    path = Path(path)
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    return _OpenVINO(ov.Core().compile_model(str(path), "CPU", _ov_config(snippets, dq_group)), size)


def openvino_fp32(spec, folder: Path) -> nn.Module:
    """OpenVINO fp32: ``openvino.convert_model`` of ``spec.model`` (dynamic batch and sequence length),
    saved as fp32 IR (``compress_to_fp16=False``) and compiled for CPU in f32 on torch's thread count."""
    return _ov_compile(_ov_model(spec), folder, "minilm-openvino-fp32", compress_to_fp16=False)


def openvino_nncf_int8(spec, folder: Path, snippets: bool = True) -> nn.Module:
    """OpenVINO + NNCF int8: ``nncf.quantize`` post-training quantisation of the converted model with
    ``model_type=nncf.ModelType.TRANSFORMER`` and the default preset, which NNCF makes ``MIXED`` for
    transformers: int8 weights symmetric per output channel, static int8 activations asymmetric per tensor,
    SmoothQuant (alpha 0.95 on the MatMuls) and fast bias correction first. Calibrated on all of
    ``spec.calib_batches`` (``subset_size`` = their number; disjoint from the eval data); compiled for CPU
    as :func:`openvino_fp32` is (the ops left in float run in f32). The quantised IR is written once per
    ``folder``: a second call (``snippets=False``: compiled without fused subgraphs) reuses it."""
    import nncf

    xml = Path(folder) / "minilm-openvino-nncf-int8.xml"
    if xml.exists():
        return _ov_load(xml, snippets)

    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in spec.latency_batch]
    data = nncf.Dataset(spec.calib_batches, lambda b: {k: b[k].numpy() for k in names})
    q = nncf.quantize(_ov_model(spec), data, model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=len(spec.calib_batches))
    return _ov_compile(q, folder, "minilm-openvino-nncf-int8", compress_to_fp16=False, snippets=snippets)


def openvino_onnx(path: Path, snippets: bool = True, dq_group: int | None = None) -> nn.Module:
    """An ONNX file (bitladder's export) read and compiled by OpenVINO for CPU, as :func:`openvino_fp32` is:
    the integer MatMuls of the file become OpenVINO's own int8 GEMMs (``dq_group``: :func:`_ov_config`)."""
    return _ov_load(path, snippets, dq_group)


def torchao_int8_dynamic(spec) -> nn.Module:
    """torchao W8A8: ``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` on a deepcopy of
    ``spec.model``, its defaults: int8 weights per output channel, int8 activations symmetric per token,
    quantised at each call; every ``nn.Linear`` (the embeddings are ``nn.Embedding`` and stay fp32). Run
    eagerly (no ``torch.compile``; ``set_inductor_config=False`` so torchao leaves inductor's settings
    alone)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    m = copy.deepcopy(spec.model).eval()
    quantize_(m, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return m


def torchao_int4_weight_only(spec, group_size: int = 64) -> nn.Module:
    """torchao W4 weight-only: ``quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4,
    granularity=PerGroup(group_size)))`` on a deepcopy of ``spec.model`` (every ``nn.Linear``, symmetric
    int4 per group of ``group_size`` input channels, fp32 scales), run eagerly.

    This is torchao's only int4 weight-only path that runs on an x86 CPU without extra kernels: the weights
    are stored one int4 value per int8 byte and dequantised to fp32 at every call (then an fp32 matmul), so it
    measures torchao's int4 fidelity, not an int4 kernel. ``Int4WeightOnlyConfig`` does not run on CPU in
    torchao 0.18 (its packings need the CUDA ``mslk`` / tinygemm kernels or an XPU/NPU device)."""
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    m = copy.deepcopy(spec.model).eval()
    quantize_(m, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))
    return m
