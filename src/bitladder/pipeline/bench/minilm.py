"""MiniLM encode throughput and fidelity: fp32, bitladder rungs, and the peers, side by side.

Batch 32 sentences from the docstring corpus (max length 128). Every variant runs in its own process
(:mod:`bitladder.pipeline.bench.isolated`), as it would be deployed, and all of them are timed in the same
interleaved rounds (median of ``repeats``, under ``torch.inference_mode``), so every ratio (to fp32 torch,
and for ONNX files to the fp32 ONNX file) compares runs made under the same machine load. Fidelity is
measured on the 256 evaluation sentences against fp32 embeddings, in the evaluation batches for the
batch-32 rows and one sentence per call for the single-sentence rows (``fidelity_batch``: what each timed
call computes). ``peak_rss_mb`` is the peak resident memory of the variant's process while it serves (Python,
torch and the runtime included; the build is not counted where Linux lets the high-water mark be reset).
Peers that are not installed (the ``bench`` extra) are listed with the reason instead of a number.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import bitladder
from bitladder import GPTQ, Act, Int
from bitladder.errors import BitladderError
from bitladder.kernels import fp32_gemm
from bitladder.pipeline.bench import peers as bench_peers
from bitladder.pipeline.bench.minilm_rungs import (W7A8_GPTQ, W7A8_GPTQ_DOWN, W7A8_MIXED, W7A8_OUTLIERS, W7A8_SQ80,
                                                W7A8_STATIC, W8A8_OUTLIERS, W8A8_ROT, W8A8_ROT64, W8A8_SQ,
                                                W8A8_SQ80, W8A8_STATIC)
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.bench.isolated import at_batch, baseline, isolated_latency
from bitladder.pipeline.bench.only import pick
from bitladder.zoo import minilm


class _Fn(nn.Module):
    """Wrap a callable (an onnxruntime session) so the evaluation helpers can call it like a model."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, **batch):
        return self.fn(batch)


class _EngineLinear(nn.Module):
    """A float Linear run through one fp32 GEMM engine (:mod:`bitladder.kernels.fp32_gemm`)."""

    def __init__(self, linear: nn.Linear, engine: str) -> None:
        super().__init__()
        self.weight, self.bias, self.engine = linear.weight, linear.bias, engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_gemm.linear(x, self.weight, self.bias, self.engine)


def _fp32_onednn(spec) -> nn.Module:
    """fp32 MiniLM with every Linear on the "onednn" engine (oneDNN's GEMM; products too small for its call cost on
    ``F.linear``, as the kernels have them): where that is the engine bitladder's dequantising kernels take, it
    separates their gain from the engine's (torch's eager Linear is MKL's, generic off Intel)."""
    if not fp32_gemm.onednn_installed():
        raise BitladderError("this torch has no oneDNN fp32 linear (torch.ops.mkldnn._linear_pointwise)")
    model = copy.deepcopy(spec.model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, _EngineLinear(child, "onednn"))
    return model


def _bitladder(spec, cfg, calib=None, ffn_down=None):
    """Int8 embeddings (a zero point per row: 1/3 of the symmetric rows' cosine loss on MiniLM), ``cfg`` on every
    other layer (``ffn_down``: another config for the FFN's second layers)."""
    base = bitladder.quantize(spec.model, Int(8, symmetric=False), include=["*embeddings*"])
    if ffn_down is not None:
        down = [n for n in bitladder.plan(base).targets if n.endswith("output.dense") and "attention" not in n]
        base = bitladder.quantize(base, ffn_down, include=down, calib=calib)
    return bitladder.quantize(base, cfg, exclude=["*embeddings*"], calib=calib)


def _backend(model: nn.Module, backend: str) -> nn.Module:
    """Pin a dynamic W8A8 model's layers to one integer GEMM (``fbgemm`` / ``onednn``) at every batch size."""
    from bitladder.nn.base import QuantModule

    for m in model.modules():
        if isinstance(m, QuantModule) and m.kernel_policy.startswith("int8-w8a8"):
            m.set_kernel_policy(m.kernel_policy.replace("w8a8", f"w8a8-{backend}"))
    return model


def _torch_ao(spec):
    if (why := bench_peers.torch_ao_unavailable()) is not None:
        raise BitladderError(why)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(spec.model), {nn.Linear}, dtype=torch.qint8)


def _session(path: Path) -> nn.Module:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    fn = _Fn(lambda b: torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in b.items() if k in names})[0]))
    fn.file_bytes = path.stat().st_size
    return fn


def _bitladder_onnx(spec, cfg, activations: str, folder: Path, calib=None, runtime=_session,
                    opset: int = 21, weights: str = "standard", static_gemm: str = "integer",
                    ffn_down=None, remove_padding: bool = False) -> nn.Module:
    """A bitladder model exported with standard operators (DequantizeLinear / MatMulInteger, or Q/DQ around
    float MatMuls: ``static_gemm``), or with onnxruntime's MatMulNBits (``weights``), run in ORT (or in
    ``runtime``, a function of the file's path); ``cfg`` None: the fp32 model through bitladder's exporter."""
    from bitladder.io.onnx_export import export_onnx

    b = spec.latency_batch
    model = spec.model if cfg is None else _bitladder(spec, cfg, calib, ffn_down)
    path = folder / f"bitladder-{cfg and cfg.qtype}-{activations}-{len(list(folder.iterdir()))}.onnx"
    export_onnx(model, {k: v[:2] for k, v in b.items()}, path, opset, activations, weights, static_gemm,
                remove_padding)
    return runtime(path)


def _ov_no_snippets(path: Path) -> nn.Module:
    """OpenVINO without its fused subgraphs: on 32 sentences its fused f32 attention ran slower than the
    separate ops (docs/results/notes.md, 'Attention in exported graphs'), for NNCF's graph and bitladder's."""
    return bench_peers.openvino_onnx(path, snippets=False)


def _onnx(spec, quantised: bool, folder: Path):
    path = folder / "minilm.onnx"
    if not path.exists():
        b = spec.latency_batch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.model, (), str(path), kwargs=dict(b), dynamo=False, opset_version=17,
                              input_names=list(b), output_names=["emb"],
                              dynamic_axes={k: {0: "batch", 1: "seq"} for k in b})
    use = path
    if quantised:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        use = folder / "minilm-int8.onnx"
        quantize_dynamic(str(path), str(use), weight_type=QuantType.QInt8)
    return _session(use)


class _NoInferenceMode(nn.Module):
    """optimum-quanto's int4 path cannot run under torch.inference_mode: run it under no_grad."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **batch):
        with torch.inference_mode(False), torch.no_grad():
            return self.model(*(a.clone() for a in args), **{k: v.clone() for k, v in batch.items()})


def _quanto(spec, weights: str):
    from optimum.quanto import freeze, qint4, qint8, quantize

    m = copy.deepcopy(spec.model)
    quantize(m, weights={"int8": qint8, "int4": qint4}[weights])
    freeze(m)
    return _NoInferenceMode(m)


def _hqq(spec):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    m = copy.deepcopy(spec.model)
    cfg = BaseQuantizeConfig(nbits=4, group_size=64)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.Linear) and "embeddings" not in name:
            parent, _, child = name.rpartition(".")
            setattr(m.get_submodule(parent), child,
                    HQQLinear(mod, cfg, compute_dtype=torch.float32, device="cpu"))
    return m


#: the engine reference: each row also carries its ratio to it (``ratio_vs_fp32_onednn``)
FP32_ONEDNN = "fp32 torch, every Linear on oneDNN's fp32 GEMM"


def variants(spec, folder: Path) -> dict[str, Callable[[], nn.Module]]:
    """Factories of every MiniLM bench variant by name; ONNX / OpenVINO files go to ``folder``."""
    calib = spec.calib_batches
    return {
        "fp32 torch": lambda: spec.model,
        FP32_ONEDNN: lambda: _fp32_onednn(spec),
        "bitladder W8A8 dynamic per-token + SmoothQuant 0.65 (oneDNN)": lambda: _bitladder(spec, W8A8_SQ, calib),
        "bitladder W8A8 dynamic per-token + SmoothQuant 0.65 (fbgemm only)": lambda: _backend(
            _bitladder(spec, W8A8_SQ, calib), "fbgemm"),
        "bitladder W8A8 dynamic per-token (oneDNN)": lambda: _bitladder(spec, Int(8, act=Act(dynamic="token"))),
        "bitladder W8A8 dynamic per-token + Hadamard 64": lambda: _bitladder(spec, W8A8_ROT64),
        # the same two on each batch's real tokens only (zoo.minilm.without_padding): what padding costs
        "fp32 torch, padding removed": lambda: minilm.without_padding(spec.model),
        "bitladder W8A8 dynamic per-token + Hadamard 64, padding removed": lambda: minilm.without_padding(
            _bitladder(spec, W8A8_ROT64)),
        "bitladder W8A8 dynamic per-tensor (oneDNN)": lambda: _bitladder(spec, Int(8, act=Act(dynamic="tensor"))),
        "bitladder W8A8 static + SmoothQuant 0.65": lambda: _bitladder(spec, W8A8_STATIC, calib),
        "bitladder W7A8 static + SmoothQuant 0.65": lambda: _bitladder(spec, W7A8_STATIC, calib),
        "bitladder W7A8 static on LayerNorm inputs, per-token elsewhere + SmoothQuant 0.65": lambda: _bitladder(
            spec, W7A8_MIXED, calib),
        "bitladder W8A8 static + SmoothQuant 0.5 + 16 outlier channels": lambda: _bitladder(spec, W8A8_OUTLIERS,
                                                                                          calib),
        "bitladder W7A8 static GPTQ, SmoothQuant auto; FFN down 0.5 + 32 outlier channels": lambda: _bitladder(
            spec, W7A8_GPTQ, calib, ffn_down=W7A8_GPTQ_DOWN),
        "bitladder W8 weight-only": lambda: _bitladder(spec, Int(8)),
        "bitladder W4 g64 gptq": lambda: _bitladder(spec, Int(4, group=64, method=GPTQ()), calib),
        "torch.ao quantize_dynamic int8": lambda: _torch_ao(spec),
        "onnxruntime fp32": lambda: _onnx(spec, False, folder),
        "onnxruntime quantize_dynamic int8": lambda: _onnx(spec, True, folder),
        "bitladder ONNX W8 (DequantizeLinear)": lambda: _bitladder_onnx(spec, Int(8), "float", folder),
        "bitladder ONNX W8A8 per-token + SmoothQuant 0.65 (MatMulInteger)": lambda: _bitladder_onnx(
            spec, W8A8_SQ, "dynamic", folder, calib),
        "bitladder ONNX W8A8 per-token + Hadamard 32 (MatMulInteger)": lambda: _bitladder_onnx(
            spec, W8A8_ROT, "dynamic", folder),
        "bitladder ONNX W8A8 per-token (MatMulInteger)": lambda: _bitladder_onnx(
            spec, Int(8, act=Act(dynamic="token")), "dynamic", folder),
        "bitladder ONNX W8A8 per-tensor (MatMulInteger)": lambda: _bitladder_onnx(spec, Int(8), "dynamic-tensor",
                                                                                 folder),
        "bitladder ONNX W8A8 static + SmoothQuant 0.65 (MatMulInteger)": lambda: _bitladder_onnx(
            spec, W8A8_STATIC, "float", folder, calib),
        "bitladder ONNX W7A8 static on LayerNorm inputs, per-token elsewhere (MatMulInteger)": lambda: _bitladder_onnx(
            spec, W7A8_MIXED, "dynamic", folder, calib),
        "bitladder ONNX W4 g64 gptq (blocked DQ)": lambda: _bitladder_onnx(
            spec, Int(4, group=64, method=GPTQ()), "float", folder, calib),
        "bitladder ONNX W4 g64 gptq (MatMulNBits)": lambda: _bitladder_onnx(
            spec, Int(4, group=64, method=GPTQ()), "float", folder, calib, weights="matmulnbits"),
        "bitladder ONNX W8A8 per-token + SmoothQuant 0.65 on OpenVINO": lambda: _bitladder_onnx(
            spec, W8A8_SQ, "dynamic", folder, calib, bench_peers.openvino_onnx, 19),
        "bitladder ONNX W8A8 static + SmoothQuant 0.5 + 16 outlier channels (MatMulInteger)": lambda: _bitladder_onnx(
            spec, W8A8_OUTLIERS, "float", folder, calib),
        "bitladder ONNX W8A8 static + SmoothQuant 0.5 + 16 outlier channels (QDQ) on OpenVINO": lambda: _bitladder_onnx(
            spec, W8A8_OUTLIERS, "float", folder, calib, bench_peers.openvino_onnx, static_gemm="qdq"),
        "bitladder ONNX W8A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (QDQ) on OpenVINO":
            lambda: _bitladder_onnx(spec, W8A8_SQ80, "float", folder, calib, bench_peers.openvino_onnx,
                                    static_gemm="qdq", ffn_down=W8A8_OUTLIERS),
        "bitladder ONNX W8A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (QDQ) on OpenVINO, "
        "snippets off": lambda: _bitladder_onnx(spec, W8A8_SQ80, "float", folder, calib, _ov_no_snippets,
                                                static_gemm="qdq", ffn_down=W8A8_OUTLIERS),
        # bitladder's files that run every token-wise layer on the batch's real tokens (export remove_padding)
        "bitladder ONNX fp32, padding removed": lambda: _bitladder_onnx(spec, None, "float", folder,
                                                                       remove_padding=True),
        "bitladder ONNX fp32, padding removed, on OpenVINO": lambda: _bitladder_onnx(
            spec, None, "float", folder, runtime=bench_peers.openvino_onnx, remove_padding=True),
        "bitladder ONNX W8A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (MatMulInteger)":
            lambda: _bitladder_onnx(spec, W8A8_SQ80, "float", folder, calib, ffn_down=W8A8_OUTLIERS),
        "bitladder ONNX W8A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (MatMulInteger), "
        "padding removed": lambda: _bitladder_onnx(spec, W8A8_SQ80, "float", folder, calib, ffn_down=W8A8_OUTLIERS,
                                                   remove_padding=True),
        "bitladder ONNX W8A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (QDQ) on OpenVINO, "
        "padding removed": lambda: _bitladder_onnx(spec, W8A8_SQ80, "float", folder, calib,
                                                   bench_peers.openvino_onnx, static_gemm="qdq",
                                                   ffn_down=W8A8_OUTLIERS, remove_padding=True),
        "bitladder ONNX W7A8 static, SmoothQuant 0.8; FFN down 0.5 + 16 outlier channels (QDQ) on OpenVINO":
            lambda: _bitladder_onnx(spec, W7A8_SQ80, "float", folder, calib, _ov_no_snippets, static_gemm="qdq",
                                    ffn_down=W7A8_OUTLIERS),
        "bitladder ONNX W7A8 static GPTQ, SmoothQuant auto; FFN down 0.5 + 32 outlier channels (QDQ) on OpenVINO, "
        "snippets off": lambda: _bitladder_onnx(spec, W7A8_GPTQ, "float", folder, calib, _ov_no_snippets,
                                                static_gemm="qdq", ffn_down=W7A8_GPTQ_DOWN),
        "bitladder ONNX W7A8 static GPTQ, SmoothQuant auto; FFN down 0.5 + 32 outlier channels (QDQ) on OpenVINO":
            lambda: _bitladder_onnx(spec, W7A8_GPTQ, "float", folder, calib, bench_peers.openvino_onnx,
                                    static_gemm="qdq", ffn_down=W7A8_GPTQ_DOWN),
        "bitladder ONNX W8A8 static + SmoothQuant 0.8 (QDQ) on OpenVINO": lambda: _bitladder_onnx(
            spec, W8A8_SQ80, "float", folder, calib, bench_peers.openvino_onnx, static_gemm="qdq"),
        "bitladder ONNX W8 on OpenVINO": lambda: _bitladder_onnx(  # OpenVINO's default: activations per 32
            spec, Int(8), "float", folder, runtime=bench_peers.openvino_onnx),
        "bitladder ONNX W8 on OpenVINO, weight-only (its dynamic quantisation off)": lambda: _bitladder_onnx(
            spec, Int(8), "float", folder, runtime=lambda p: bench_peers.openvino_onnx(p, dq_group=0)),
        "bitladder ONNX W8 on OpenVINO, activations int8 per 64 inputs (its dynamic quantisation)":
            lambda: _bitladder_onnx(spec, Int(8), "float", folder,
                                    runtime=lambda p: bench_peers.openvino_onnx(p, dq_group=64)),
        "bitladder ONNX W4 g64 gptq on OpenVINO": lambda: _bitladder_onnx(
            spec, Int(4, group=64, method=GPTQ()), "float", folder, calib, bench_peers.openvino_onnx),
        "openvino fp32": lambda: bench_peers.openvino_fp32(spec, folder),
        "openvino + nncf int8 PTQ": lambda: bench_peers.openvino_nncf_int8(spec, folder),
        "openvino + nncf int8 PTQ, snippets off": lambda: bench_peers.openvino_nncf_int8(spec, folder, False),
        "torchao W8A8 dynamic (eager)": lambda: bench_peers.torchao_int8_dynamic(spec),
        "torchao W4 g64 weight-only (IntxWeightOnly)": lambda: bench_peers.torchao_int4_weight_only(spec),
        "optimum-quanto W8": lambda: _quanto(spec, "int8"),
        "optimum-quanto W4": lambda: _quanto(spec, "int4"),
        "hqq W4 g64": lambda: _hqq(spec),
    }


def single_sentence(batch: dict, i: int = 0) -> dict:
    """Sentence ``i`` of ``batch`` alone, its padding cut off: the edge case of one request."""
    n = int(batch["attention_mask"][i].sum())
    return {k: v[i: i + 1, :n].contiguous() for k, v in batch.items()}


def one_by_one(batches: list[dict]) -> list[dict]:
    """Every sentence of ``batches`` as its own request: kernels are chosen by row count, so a model's
    numerics at one sentence can differ from its numerics at 32 (int8 activations per block on few rows)."""
    return [single_sentence(b, i) for b in batches for i in range(len(b["input_ids"]))]


BATCHES = (32, 1)
#: calls per round: one sentence also runs five more back to back (``warm_latency_ms``): on the bench's VM the
#: first call after the harness's pause pays a CPU wake-up, fp32's and every rung's alike, which compresses
#: one-sentence ratios (docs/results/notes.md, 'One sentence, sporadic or streamed')
BURSTS = (1, 6)


def serve_variant(name: str, folder: str):
    """Build one variant in a benchmark worker (:mod:`bitladder.pipeline.bench.isolated`): the model, the timing
    batches (32 sentences, then one), and its outputs on the evaluation sentences with its file size."""
    spec = minilm.spec()
    model = variants(spec, Path(folder))[name]()
    out = outputs(model, spec.eval_batches)
    single = outputs(model, one_by_one(spec.eval_batches))
    timed = [spec.latency_batch, single_sentence(spec.latency_batch)]
    return model, timed, {"outputs": out.numpy(), "outputs_single": single.numpy(),
                          "onnx_bytes": getattr(model, "file_bytes", None)}


def warm_fields(g: dict, fp32: dict) -> dict:
    """A variant's warm columns (the back-to-back calls of a burst) beside fp32's, where both were timed."""
    if not (g.get("warm_latency_s") and fp32.get("warm_latency_s")):
        return {}
    return {"warm_latency_ms": round(g["warm_latency_s"] * 1e3, 2),
            "warm_ratio_vs_fp32": round(fp32["warm_latency_s"] / g["warm_latency_s"], 3),
            "warm_ratio_vs_fp32_iqr": round_spread(fp32["warm_rounds_s"], g["warm_rounds_s"])}


def round_spread(base: list[float] | None, times: list[float]) -> list[float] | None:
    """[first, third] quartile of the per-round ratios ``base[i] / times[i]`` (runs of the same round saw the
    same load): how far the ratio moved from round to round. None without the baseline's rounds."""
    if not base or len(base) != len(times) or len(times) < 4:
        return None
    q = statistics.quantiles([b / t for b, t in zip(base, times)], n=4)
    return [round(q[0], 3), round(q[2], 3)]


#: the baselines every ratio needs: built first, timed in every group of workers (pipeline/bench/isolated.py)
ANCHORS = ("fp32 torch", FP32_ONEDNN, "onnxruntime fp32")


def minilm_rows(repeats: int = 10, only: list[str] | None = None) -> list[dict]:
    """Bench rows of every variant (or those matching ``only``, plus the fp32 baselines) at each batch size."""
    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    with tempfile.TemporaryDirectory() as tmp:
        every = variants(spec, Path(tmp))
        names = pick(list(every), only, ANCHORS, "minilm")
        got = isolated_latency({n: (f"{__name__}:serve_variant", (n, tmp)) for n in names}, repeats,
                               batches=len(BATCHES), bursts=BURSTS, anchors=ANCHORS)
    rows = []
    for j, batch in enumerate(BATCHES):
        rows += _rows(spec, ref, names, at_batch(got, j), batch)
    return rows


def _rows(spec, ref, names: list[str], got: dict, batch: int) -> list[dict]:
    """The rows of one timed batch size (``got``: ``isolated.at_batch``'s), each against its own timing group's
    baselines. Fidelity is measured on the evaluation sentences against fp32's, in the evaluation batches for the
    batch-32 rows and one at a time for the batch-1 rows (``fidelity_batch``)."""
    rows = []
    for name in names:
        g, row = got[name], {"case": "minilm", "batch": batch, "variant": name}
        if "error" in g:  # a peer that is missing or fails here is reported, not fatal
            rows.append({**row, "latency_ms": None, "ratio_vs_fp32": None, "peak_rss_mb": None, "cos_mean": None,
                         "cos_min": None, "knn10": None, "error": g["error"]})
            continue
        fp32, onednn, onnx = (baseline(got, name, a) for a in ANCHORS)
        out = g["info"]["outputs" if batch > 1 else "outputs_single"]
        per_call = len(spec.eval_batches[0]["input_ids"]) if batch > 1 else 1
        fid, s = fidelity(spec, torch.from_numpy(out), ref), g["latency_s"]
        row.update(latency_ms=round(s * 1e3, 2), fp32_latency_ms=round(fp32["latency_s"] * 1e3, 2),
                   ratio_vs_fp32=round(fp32["latency_s"] / s, 3), peak_rss_mb=g["peak_rss_mb"],
                   allocator=g.get("allocator"),
                   cos_mean=fid["fidelity"], cos_min=fid["cos_min"], knn10=fid["knn10"], fidelity_batch=per_call,
                   onnx_bytes=g["info"]["onnx_bytes"])
        row.update({"timing_group": g["group"]} if "group" in g else {})
        row["ratio_vs_fp32_iqr"] = round_spread(fp32.get("rounds_s"), g["rounds_s"])
        row.update(warm_fields(g, fp32))
        if onednn.get("latency_s"):
            row["ratio_vs_fp32_onednn"] = round(onednn["latency_s"] / s, 3)
        if row["onnx_bytes"] and onnx.get("latency_s"):
            row["ratio_vs_fp32_onnx"] = round(onnx["latency_s"] / s, 3)
            row["ratio_vs_fp32_onnx_iqr"] = round_spread(onnx.get("rounds_s"), g["rounds_s"])
        rows.append(row)
    return rows
