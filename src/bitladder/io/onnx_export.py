"""ONNX export of quantised models with standard operators only (opset 21 for 4-bit weights).

The model is exported through a float twin (quantised layers replaced by float layers holding the
dequantised weight), then every quantised weight initializer is replaced by its packed integer
tensor and a standard ``DequantizeLinear``: int8/uint8 per channel or per tensor, int4/uint4 with
*blocked* scales (opset 21 ``block_size``) for group layouts; a blocked Linear weight is stored
input-major so that its DequantizeLinear feeds the MatMul directly, the form runtimes fuse
(:mod:`bitladder.io.onnx_blocked`). int3, int2, ternary and binary codes are widened to 4-bit storage
(ONNX has no narrower integer type); float formats become a Cast from fp16 / bf16 or a DequantizeLinear
from fp8. Per-channel input scales (AWQ, SmoothQuant) become a Mul. Static
(calibrated) activations become QuantizeLinear on the layer's grid: into MatMulInteger for int8 weights, else
followed by DequantizeLinear in front of the float op.
Any layer without a rule is named in the error. ``weights="matmulnbits"`` writes layers of 4 bits or
fewer as onnxruntime's MatMulNBits instead (:mod:`bitladder.io.onnx_nbits`; onnxruntime only).
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.onnx_attention import plain_attention
from bitladder.io.onnx_blocked import blocked_eligible, rewrite_blocked
from bitladder.io.onnx_dynamic import dynamic_int8_eligible, int8_gemm_eligible, qdq_input, rewrite, static_grid
from bitladder.io.onnx_nbits import nbits_eligible, rewrite_nbits
from bitladder.io.onnx_outliers import recompute_outlier_inputs
from bitladder.io.onnx_ranges import gemm_problems
from bitladder.io.onnx_weights import WEIGHT_RULES, weight_nodes
from bitladder.io.onnx_gather import gather_eligible, rewrite_gather
from bitladder.nn.base import QuantModule
from bitladder.nn.outliers import mask_free

log = logging.getLogger("bitladder")

def _float_twin(model: nn.Module) -> nn.Module:
    """A float copy whose quantised layers hold their dequantised weights (for tracing only)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if not isinstance(m, QuantModule):
            continue
        if "act" in m.qmeta and static_grid(m) is None:
            raise BitladderError(f"layer {name!r}: {m.qmeta['act']['observer']} activations ({m.qmeta['act']['qtype']}) "
                                 "have no ONNX export rule; accepted: static (calibrated) integer grids")
        qtype = m.qweight.qtype
        if qtype.rules.onnx not in WEIGHT_RULES:
            raise BitladderError(f"layer {name!r}: {qtype.kind} weights ({qtype.name}) have no ONNX export rule")
        try:
            new = m.to_float()
        except NotImplementedError:
            raise BitladderError(f"layer {name!r} ({type(m).__name__}) has no ONNX export rule; accepted: Linear, "
                                 "Conv1d, Conv2d, Embedding") from None
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin.eval()


def _tied(proto, inits: dict, weights: set[str]) -> dict[str, str]:
    """Quantised weights the exporter merged into another's (tied embeddings: equal dequantised values),
    as {alias: the initializer it reads through an Identity}."""
    return {n.output[0]: n.input[0] for n in proto.graph.node
            if n.op_type == "Identity" and n.input[0] in inits and n.input[0] in weights and n.output[0] in weights}


def _weight_only(proto, init, wname: str, m: QuantModule, opset: int, new_nodes: list, in_scale: bool = True,
                 gemm: bool = False) -> None:
    """Replace the float initializer ``wname`` by packed codes + DequantizeLinear (and the input scale);
    ``gemm``: a static layer's Q/DQ weight, which runtimes multiply as integers (:func:`weight_nodes`)."""
    from onnx import helper, numpy_helper

    proto.graph.initializer.remove(init)
    extra, nodes, out = weight_nodes(wname, m, opset, in_scale, gemm)
    proto.graph.initializer.extend(extra)
    new_nodes += nodes
    if "in_scale" in m.qmeta and in_scale:  # (a static layer's input got the scale before its grid)
        s = m.in_scale.float().numpy()
        shape = [1] * len(m.qweight.shape)
        shape[m.in_axis] = -1
        proto.graph.initializer.append(numpy_helper.from_array(s.reshape(shape), f"{wname}__in"))
        new_nodes.append(helper.make_node("Mul", [out, f"{wname}__in"], [wname]))


ACTIVATIONS = ("float", "dynamic", "dynamic-tensor")
WEIGHTS = ("standard", "matmulnbits")
STATIC_GEMMS = ("integer", "qdq")


def export_onnx(model: nn.Module, example: Any, path: str | Path, opset: int = 21,
                activations: str = "float", weights: str = "standard", static_gemm: str = "integer",
                remove_padding: bool = False) -> Path:
    """Export ``model`` (quantised or not) called on ``example`` (a tensor or a dict of tensors).

    ``activations="dynamic"``: int8 Linear layers run as DynamicQuantizeLinear + MatMulInteger
    (faster in onnxruntime) with one activation scale per token; "dynamic-tensor": one scale per call
    (what onnxruntime's own quantize_dynamic does); "float" keeps weight-only semantics.
    ``weights="matmulnbits"``: Linear layers of 4 bits or fewer as onnxruntime's MatMulNBits (fp32
    activations, same numerics, onnxruntime only); "standard": DequantizeLinear, any runtime.
    ``static_gemm``: layers with calibrated int8 activations as MatMulInteger ("integer", what onnxruntime
    fuses) or as QuantizeLinear -> DequantizeLinear on the input and DequantizeLinear on the weight around the
    float MatMul ("qdq", the form OpenVINO and TensorRT turn into their own int8 GEMMs); the same numbers. Either
    way the integer GEMM is proven unable to saturate on CPUs without VNNI: 8-bit weight codes are stored as
    uint8 around 128, 7-bit ones as int8.
    ``remove_padding``: a BERT-style encoder (or a model holding one) runs its token-wise layers on the batch's
    real tokens only (:func:`bitladder.nn.unpad.without_padding`): the same outputs, a faster file on padded
    batches of sentences.
    """
    if activations not in ACTIVATIONS:
        raise BitladderError(f"activations must be one of {', '.join(ACTIVATIONS)}; got {activations!r}")
    if weights not in WEIGHTS:
        raise BitladderError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if static_gemm not in STATIC_GEMMS:
        raise BitladderError(f"static_gemm must be one of {', '.join(STATIC_GEMMS)}; got {static_gemm!r}")
    try:
        import onnx
    except ImportError:
        raise BitladderError("ONNX export needs the packages onnx and onnxruntime") from None
    if opset < 13:
        raise BitladderError(f"opset {opset} is too old; accepted: 13 and newer (21 for 4-bit weights)")
    path = Path(path)
    if not path.parent.is_dir():
        raise BitladderError(f"cannot write {path}: folder {path.parent} does not exist")
    if remove_padding:
        from bitladder.nn.unpad import without_padding

        model = without_padding(model)
    quantised = {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}
    twin = _float_twin(model)
    plain_attention(twin)  # no NaN guard per Softmax; runtimes see the attention block whole
    if isinstance(example, dict):  # only the inputs forward() names: the exporter maps names by position
        params = inspect.signature(model.forward).parameters
        named = [k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        example = {k: v for k, v in example.items() if k in named} or example
    names = list(example) if isinstance(example, dict) else ["input"]
    args = tuple(example.values()) if isinstance(example, dict) else (example,)
    if isinstance(example, dict):  # traced by position: mapped onto forward()'s parameters, a dict's missing
        call = twin.forward  # ones are filled with defaults, which Hugging Face's decorated forwards reject
        twin.forward = lambda *xs: call(**dict(zip(names, xs)))
    # token ids of a language model: the sequence is dynamic in and out (its logits are batch x seq x vocab)
    ids = isinstance(example, torch.Tensor) and example.dim() == 2 and not example.is_floating_point()
    seq = {1: "seq"} if isinstance(example, dict) or ids else {}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(twin, args, str(tmp), dynamo=False, opset_version=opset,
                          do_constant_folding=False, input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} | seq for n in names}
                          | {"output": {0: "batch"} | ({1: "seq"} if ids else {})})
        proto = onnx.load(str(tmp))
        inits = {i.name: i for i in proto.graph.initializer}
        tied = _tied(proto, inits, {f"{n}.weight" if n else "weight" for n in quantised})
        new_nodes, shared = [], {}
        for name, m in quantised.items():
            wname = f"{name}.weight" if name else "weight"
            if wname in tied:  # reads the tied layer's dequantised weight through the exporter's Identity
                if "in_scale" in m.qmeta or "act" in m.qmeta:
                    raise BitladderError(f"layer {name!r} shares its weight with {tied[wname]!r} but has its own "
                                         "input scale or activation grid; accepted: tied layers quantised alike")
                continue
            if wname not in inits:
                if any(wname in n.input for n in proto.graph.node):
                    raise BitladderError(f"layer {name!r}: its weight is not a plain initializer in the graph")
                log.info("layer %s is not used by the traced forward; left out of the ONNX file", name)
                continue
            if wname in tied.values():  # shared: keep it one dequantised tensor both layers read
                _weight_only(proto, inits[wname], wname, m, opset, new_nodes)
                continue
            static = static_grid(m) is not None
            if static:  # an input scale that only zeroes outlier channels goes into the weight: no Mul
                m = mask_free(m)
            if static and static_gemm == "integer" and int8_gemm_eligible(m) and rewrite(proto, wname, m, "static",
                                                                                        shared):
                proto.graph.initializer.remove(inits[wname])
                continue
            if activations != "float" and dynamic_int8_eligible(m) \
                    and rewrite(proto, wname, m, "token" if activations == "dynamic" else "tensor", shared):
                proto.graph.initializer.remove(inits[wname])
                continue
            if static and not qdq_input(proto, wname, m):
                raise BitladderError(f"layer {name!r}: static activations need its input as the first input of "
                                     "the node reading its weight; the traced graph has another pattern")
            if weights == "matmulnbits" and nbits_eligible(m) and rewrite_nbits(proto, wname, m):
                proto.graph.initializer.remove(inits[wname])
                continue
            if gather_eligible(m) and rewrite_gather(proto, wname, m):
                proto.graph.initializer.remove(inits[wname])
                continue
            if blocked_eligible(m) and rewrite_blocked(proto, wname, m, opset):
                proto.graph.initializer.remove(inits[wname])
                continue
            _weight_only(proto, inits[wname], wname, m, opset, new_nodes, in_scale=not static, gemm=static)
        nodes = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes + nodes)  # weights first: a valid topological order
        recompute_outlier_inputs(proto)
        onnx.checker.check_model(proto)
        problems = gemm_problems(proto)
        if problems:  # a graph that is right on this CPU and wrong on another is never written
            raise BitladderError(f"the exported graph would saturate on CPUs without VNNI: {problems[0]}")
        onnx.save(proto, str(tmp))
    return path
