"""Deployment targets of ``bitladder export --to``: a registry of what each writes and what it needs.

Each target names the package it needs (so a missing one is one line saying what to install), whether it
writes a file or a folder, and a writer ``(model, example, out, options) -> Path``. Writers are atomic and
refuse what their runtime cannot express exactly (see each module).

>>> sorted(TARGETS)
['executorch', 'gguf', 'hf', 'onnx']
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bitladder.errors import BitladderError

Writer = Callable[[nn.Module, Any, Path, dict], Path]


@dataclass(frozen=True)
class Target:
    """One deployment format: its name, the package it needs (import name, pip name), what it writes."""
    name: str
    writes: str  # "file" or "folder"
    suffix: str  # the usual suffix of what it writes ("" for a folder)
    needs: tuple[str, str] | None
    write: Writer
    about: str


def _onnx(model, example, out, opts):
    from bitladder.io.onnx_export import export_onnx

    return export_onnx(model, example, out, opts.get("opset", 21), opts.get("activations", "float"),
                       opts.get("weights", "standard"), opts.get("static_gemm", "integer"),
                       opts.get("remove_padding", False))


def _gguf(model, example, out, opts):
    from bitladder.io.gguf_export import export_gguf

    return export_gguf(model, out)


def _hf(model, example, out, opts):
    from bitladder.io.hf_export import export_hf

    return export_hf(model, out)


def _executorch(model, example, out, opts):
    from bitladder.io.executorch_export import export_executorch

    return export_executorch(model, example, out)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", "file", ".onnx", ("onnx", "onnx"), _onnx, "ONNX with standard operators (onnxruntime, OpenVINO)"),
    Target("gguf", "file", ".gguf", ("gguf", "gguf"), _gguf, "GGUF for llama.cpp (Llama-architecture causal LMs)"),
    Target("hf", "folder", "", ("compressed_tensors", "compressed-tensors"), _hf,
           "a Hugging Face folder in the compressed-tensors format (transformers, vLLM)"),
    Target("executorch", "file", ".pte", ("executorch", "executorch"), _executorch,
           "an ExecuTorch .pte lowered to XNNPACK (phones, boards)"),
)}


def target(name: str) -> Target:
    """The registered target ``name``, with its package present, or a one-line error."""
    if name not in TARGETS:
        raise BitladderError(f"unknown export target {name!r}; accepted: {', '.join(TARGETS)}")
    t = TARGETS[name]
    if t.needs and importlib.util.find_spec(t.needs[0]) is None:
        raise BitladderError(f"export --to {name} needs the {t.needs[1]} package: pip install "
                             f"'bitladder[deploy]' (or pip install {t.needs[1]})")
    return t


def check(name: str, out: str | Path, **options) -> Target:
    """The target, once its package, the output folder and the options are known to fit (before any work)."""
    t = target(name)
    extra = sorted(k for k, v in options.items() if v is not None) if name != "onnx" else []
    if extra:
        raise BitladderError(f"option(s) {', '.join(extra)} apply to --to onnx only")
    if not Path(out).parent.exists():
        raise BitladderError(f"folder {Path(out).parent} does not exist")
    return t


def export(name: str, model: nn.Module, example: Any, out: str | Path, **options) -> Path:
    """Write ``model`` to ``out`` in target ``name``; options other than ONNX's are refused by name."""
    t = check(name, out, **options)
    return t.write(model, example, Path(out), {k: v for k, v in options.items() if v is not None})
