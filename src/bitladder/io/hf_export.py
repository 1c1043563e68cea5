"""Hugging Face checkpoint export in the ``compressed-tensors`` format (what transformers and vLLM load).

The folder holds config.json with a ``quantization_config`` and safetensors of packed integer weights:
``AutoModelForCausalLM.from_pretrained(folder)`` loads it with compressed-tensors installed. bitladder's
own codes go in unchanged: each quantised Linear is declared to compressed-tensors with its format (one
config group per distinct format), given bitladder's scales and zero points, and its float weight is set
to bitladder's dequantised weight, so compressed-tensors' own packer recovers exactly bitladder's codes
(``w / scale`` is the code itself) — the packing is compressed-tensors', not a copy of it here.

Held: symmetric integer weights of 2-8 bits, per channel or per group along the input, on Linear layers.
Quantised embeddings are written as their dequantised float weights (exactly the values bitladder looks up;
compressed-tensors quantises Linear layers only), with a warning naming them.
Refused, with the layer and reason: zero points (integer ones do not load back, see :func:`_args`; HQQ's are
floats), input scales kept on a layer (SmoothQuant, ``AWQ(fold=False)``; AWQ's default folds them into the
model's norms and rows), static activation grids, and non-integer formats.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding, QuantLinear
from bitladder.tensor.quantized import QuantizedTensor

log = logging.getLogger("bitladder")
ACCEPTED = ("integer weights of 2-8 bits on Linear layers, per output channel or per group along the input, "
            "symmetric, without input scales or static activation grids")


def _args(qt: QuantizedTensor, name: str) -> dict:
    """compressed-tensors QuantizationArgs (as a dict) for ``qt``, or a clear refusal."""
    lay = qt.layout
    if qt.qtype.kind != "int" or qt.table is not None or not 2 <= qt.qtype.bits <= 8:
        raise BitladderError(f"layer {name!r} ({qt.qtype.name}): compressed-tensors holds {ACCEPTED}")
    if lay.granularity == "tensor" or lay.axis % 2 != 0:
        raise BitladderError(f"layer {name!r}: scales per {lay.granularity} (axis {lay.axis}); "
                             f"compressed-tensors holds {ACCEPTED}")
    if qt.zero_point is not None:
        # compressed-tensors 0.20 packs group zero points along the output rows, and transformers 5.24
        # refuses the packed shape when it loads the folder (size mismatch), so they cannot round-trip
        raise BitladderError(f"layer {name!r} ({qt.qtype.name} with zero points): zero points do not load "
                             f"back through compressed-tensors + transformers; it holds {ACCEPTED}")
    k = qt.shape[1]
    if lay.granularity == "group" and k % lay.group:
        raise BitladderError(f"layer {name!r}: {k} inputs are not a whole number of groups of {lay.group}")
    args = {"num_bits": int(qt.qtype.bits), "type": "int", "symmetric": True,
            "strategy": "group" if lay.granularity == "group" else "channel"}
    if lay.granularity == "group":
        args["group_size"] = lay.group
    return args


def _check(name: str, m: nn.Module) -> None:
    if isinstance(m, QuantEmbedding):
        return  # written as float: see export_hf
    if not isinstance(m, QuantLinear):
        raise BitladderError(f"layer {name!r} ({type(m).__name__}): compressed-tensors export holds quantised "
                             f"Linear layers only; keep this layer in float (exclude it)")
    if "in_scale" in m._qmeta:
        raise BitladderError(f"layer {name!r} multiplies its inputs by an input scale (AWQ / SmoothQuant), "
                             f"which compressed-tensors cannot hold: use AWQ(fold=True) on a Llama-family model, GPTQ or RTN")
    if "act" in m._qmeta:
        raise BitladderError(f"layer {name!r} quantises its activations on a calibrated grid; "
                             f"compressed-tensors export holds weight-only models here")


def export_hf(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (a bitladder-quantised Hugging Face model, or bitladder's wrapper of one) as a
    compressed-tensors checkpoint folder at ``path``; the folder appears only once complete."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config

    hf = getattr(model, "lm", model)
    if not hasattr(hf, "save_pretrained"):
        raise BitladderError(f"export to a Hugging Face folder takes a transformers model; got {type(hf).__name__}")
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BitladderError(f"{path} exists and is not an empty folder; the export writes a new folder")
    quantised = {n: m for n, m in hf.named_modules() if isinstance(m, QuantModule)}
    if not quantised:
        raise BitladderError("the model has no quantised layer: save a float model with save_pretrained")
    for name, m in quantised.items():
        _check(name, m)
    # compressed-tensors quantises Linear layers only: an embedding goes in as its dequantised weight, the
    # exact values bitladder looks up (the same model, stored wider)
    embeddings = {n: quantised.pop(n) for n in [n for n, m in quantised.items() if isinstance(m, QuantEmbedding)]}
    if not quantised:
        raise BitladderError("only embeddings are quantised, and compressed-tensors holds quantised Linear layers "
                             "only: quantise Linear layers too, or save the float model with save_pretrained")
    if embeddings:
        log.warning("export --to hf: %s written in float (compressed-tensors holds quantised Linear layers only; "
                    "the values are bitladder's dequantised ones)", ", ".join(embeddings))
    groups: dict[str, list[str]] = {}
    args_of: dict[str, dict] = {}
    for name, m in quantised.items():
        a = _args(m.qweight, name)
        key = repr(sorted(a.items()))
        args_of[key] = a
        groups.setdefault(key, []).append(name)
    twin = copy.deepcopy(hf)
    if getattr(twin.config, "tie_word_embeddings", False) and (
            embeddings or any(n.endswith("lm_head") for n in quantised)):
        # a quantised head or embedding no longer equals the other: tied on reload, one would silently become the other
        twin.config.tie_word_embeddings = False
    for name, m in {**quantised, **embeddings}.items():  # float layers holding exactly bitladder's dequantised weights
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, m.to_float())
    config = QuantizationConfig(config_groups={
        f"group_{i}": QuantizationScheme(targets=[f"re:^{n.replace('.', '[.]')}$" for n in names],
                                         weights=args_of[key])
        for i, (key, names) in enumerate(groups.items())})
    apply_quantization_config(twin, config, show_progress=False)
    for name, m in quantised.items():
        layer = twin.get_submodule(name)
        scale = m.qweight.scale.float()  # (C, groups): as compressed-tensors lays out channel / group scales
        layer.weight_scale.data = scale.to(layer.weight_scale.dtype).reshape(layer.weight_scale.shape)
    compressor = ModelCompressor.from_pretrained_model(twin)
    compressor.compress_model(twin)
    tmp = Path(tempfile.mkdtemp(dir=path.parent if path.parent.exists() else None, prefix=f".{path.name}."))
    try:
        twin.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
