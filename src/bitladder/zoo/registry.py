"""Resolve a model name to a :class:`ModelSpec`: built-ins, a user's ``module:function``, or a local Hugging
Face folder (:mod:`bitladder.zoo.hf_folder`: causal LMs and sentence encoders), optionally with a user's
text file for evaluation and calibration (:mod:`bitladder.zoo.text`).

What a user factory may return is in :mod:`bitladder.zoo.factory`.
"""

from __future__ import annotations

import importlib
import os
import re

from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo.factory import spec_from
from bitladder.zoo.spec import ModelSpec

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODULES = {"digits": "digits", "minilm": "minilm", "tinylm": "causal_lm"}  # built-in name -> zoo module
BUILTINS = tuple(_MODULES)
TEXT_BUILTINS = ("minilm", "tinylm")  # built-ins whose spec(text=...) takes a user's text
ACCEPTED = ("a built-in name (digits, minilm, tinylm), a factory 'package.module:function' or a Hugging Face "
            "folder (config.json + safetensors)")


def _builtin_module(name: str):
    """The module of a built-in model: it has ``spec()`` and ``build()`` (an untrained float model)."""
    return importlib.import_module(f"bitladder.zoo.{_MODULES[name]}")


def _builtin_spec(name: str) -> ModelSpec:
    return _builtin_module(name).spec()


def build_builtin(source: str | None, weights: bool = True) -> nn.Module:
    """The float model for an artifact's recorded source (built-ins only: never import by metadata).
    ``weights=False``: where the source allows it (a streamable Hugging Face causal LM), parameters on the meta
    device and nothing read; an artifact's loader assigns every stored tensor."""
    if source == "digits":
        from bitladder.zoo.digits import DigitsCNN

        return DigitsCNN().eval()
    if source in ("minilm", "tinylm"):
        return _builtin_module(source).build()
    if isinstance(source, str) and source.startswith("hf:"):  # a Hugging Face folder: safetensors only, no code
        from bitladder.zoo import hf_folder

        return hf_folder.build(source, weights=weights)
    raise BitladderError(f"artifact source {source!r} is not a built-in model; pass the float model "
                         "(Python: load(path, model=...)) to load it")


def build_for_load(source: str | None) -> nn.Module:
    """The model an artifact's loader fills from its recorded source: :func:`build_builtin` without weights."""
    return build_builtin(source, weights=False)


def with_task(name: str, task: str | None) -> str:
    """``name`` run as ``task``: a Hugging Face folder's source naming the task (checked against the checkpoint);
    ``name`` itself without a task."""
    from bitladder.zoo import hf_folder

    if task is None:
        return name
    if not hf_folder.is_source(name):
        raise BitladderError(f"--task applies to Hugging Face folders; {name!r} is not one (built-ins and "
                             "factories have one task each)")
    return hf_folder.with_task(name, task)


def resolve(name: str, data: str | os.PathLike | None = None, task: str | None = None) -> ModelSpec:
    """The ModelSpec of a built-in model name, a Hugging Face folder or a ``module:function`` factory;
    ``data``: a text file whose samples replace the built-in corpus (text models only, see
    :mod:`bitladder.zoo.text`); ``task``: what a Hugging Face folder runs as where its config.json says
    otherwise (:data:`bitladder.zoo.hf_folder.TASKS`). BitladderError otherwise."""
    from bitladder.zoo import hf_folder, text

    name = with_task(name, task)

    if data is not None and (name not in TEXT_BUILTINS and not hf_folder.is_source(name)):
        raise BitladderError(f"--data gives text to text models ({', '.join(TEXT_BUILTINS)} or a Hugging Face "
                             f"folder); {name!r} is not a text model (a factory returns its own data)")
    txt = text.read(data) if data is not None else None
    if name in BUILTINS:
        return _builtin_spec(name) if txt is None else _builtin_module(name).spec(text=txt.unlabelled("the built-in text models"))
    if hf_folder.is_source(name):
        return hf_folder.spec(name, txt)
    if not _FACTORY.match(name):
        raise BitladderError(f"unknown model {name!r}; accepted: {ACCEPTED}")
    mod_name, fn_name = name.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything at import
        raise BitladderError(f"cannot load factory {name!r}: {type(e).__name__}: {e}") from None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the user's function may raise anything
        raise BitladderError(f"factory {name!r} raised {type(e).__name__}: {e}") from None
    return spec_from(name, result)
