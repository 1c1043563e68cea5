"""Validation of an artifact's ``bitladder`` metadata before anything is built from it: each field's type
and range, so that a damaged or hand-edited file stops with one line naming the field and what is accepted,
never deep inside a layer constructor or a kernel.

>>> layer = {"handler": "QuantLinear", "qtype": "int4", "shape": [4, 8],
...          "layout": {"granularity": "group", "axis": 0, "group": 4}, "scale_dtype": "float16"}
>>> check_meta({"format_version": 1, "source": "digits", "config": None, "layers": {"0": layer}})
>>> check_meta({"format_version": 1, "layers": {"0": {**layer, "shape": [4, -8]}}})
Traceback (most recent call last):
...
bitladder.errors.BitladderError: layer '0': shape must be a list of 1 to 8 integers in [1, 2**31], got [4, -8]
"""

from __future__ import annotations

import re

from bitladder.errors import BitladderError
from bitladder.formats.layout import GRANULARITIES
from bitladder.formats.qtypes import QTYPES

BIG = 2**31  # no dimension, size or count of a real layer reaches this
_MODULE = re.compile(r"(?:[^\s.\[\]]+(?:\.[^\s.\[\]]+)*)?")  # '' is the model itself; '[' is rich markup
_WORD = re.compile(r"[\w.:+-]{1,200}")  # names printed in tables: no markup brackets, no spaces
_HF = re.compile(r"hf:/[^\x00-\x1f\x7f\[\]]{1,4000}")  # a model folder's absolute path: no control characters


def _int(v, lo: int = 1, hi: int = BIG) -> bool:
    return type(v) is int and lo <= v <= hi  # bool is an int subclass: refused


def _one_of(v, names) -> bool:
    return isinstance(v, str) and v in names  # a list or dict is no name (and unhashable)


def _fail(where: str, field: str, accepted: str, got) -> BitladderError:
    return BitladderError(f"{where}: {field} must be {accepted}, got {repr(got)[:80]}")


def _check_layer(name, lm) -> None:
    where = f"layer {name!r}"
    if not isinstance(name, str) or not _MODULE.fullmatch(name):
        raise BitladderError(f"{where}: a layer name is a dotted module path (no spaces or brackets)")
    if not isinstance(lm, dict):
        raise _fail(where, "the record", "an object", lm)
    if not isinstance(lm.get("handler"), str) or not re.fullmatch(r"[A-Za-z_]\w*", lm["handler"]):
        raise _fail(where, "handler", "a handler class name", lm.get("handler"))
    if not _one_of(lm.get("qtype"), QTYPES):
        raise _fail(where, "qtype", f"one of {', '.join(QTYPES)}", lm.get("qtype"))
    shape = lm.get("shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8 and all(_int(s) for s in shape)):
        raise _fail(where, "shape", "a list of 1 to 8 integers in [1, 2**31]", shape)
    lay = lm.get("layout")
    if not isinstance(lay, dict) or set(lay) != {"granularity", "axis", "group"}:
        raise _fail(where, "layout", "an object with granularity, axis and group", lay)
    if not _one_of(lay["granularity"], GRANULARITIES):
        raise _fail(where, "layout granularity", f"one of {', '.join(GRANULARITIES)}", lay.get("granularity"))
    if not _int(lay["axis"], -len(shape), len(shape) - 1):
        raise _fail(where, "layout axis", f"an axis of the {len(shape)}-d shape", lay.get("axis"))
    group = lay["group"]
    if not (group is None or _int(group)) or (lay["granularity"] == "group" and group is None):
        raise _fail(where, "layout group", "a positive group size (null unless granularity is group)", group)
    _check_extras(where, lm, shape)


def _check_extras(where: str, lm: dict, shape: list) -> None:
    from bitladder.kernels.select import policies

    numel = 1
    for s in shape:
        numel *= s
    if "kernel" in lm and not _one_of(lm["kernel"], policies()):
        raise _fail(where, "kernel", "a kernel policy (auto, a family or a registered kernel)", lm["kernel"])
    for key in ("method", "scale_dtype"):
        if lm.get(key) is not None and not isinstance(lm[key], str):
            raise _fail(where, key, "a string", lm[key])
    if "in_scale" in lm and not _int(lm["in_scale"], 1, numel):
        raise _fail(where, "in_scale", "the number of input channels", lm["in_scale"])
    if "outliers" in lm and not _int(lm["outliers"], 1, numel):
        raise _fail(where, "outliers", "the number of outlier input channels", lm["outliers"])
    act = lm.get("act")
    if act is None:
        return
    if not isinstance(act, dict) or not _one_of(act.get("qtype"), QTYPES):
        raise _fail(where, "act", "an object whose qtype is a known format", act)
    if act["qtype"] == "binary" and not _int(act.get("channels"), 1, numel):
        raise _fail(where, "act channels", "the number of input channels", act.get("channels"))
    if act.get("dynamic") not in (None, "token") or not isinstance(act.get("observer", ""), str):
        raise _fail(where, "act", "an object with dynamic null or 'token' and an observer name", act)


# constructor arguments of recorded modules (torch layers, factorised convs, rotations, shortcuts): what each
# must hold; torch checks few of these types itself and fails only at the first forward
_POS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
        "num_embeddings", "embedding_dim", "block", "in_f", "out_f", "rank")
_POS_LISTS = ("kernel_size", "stride", "dilation", "normalized_shape", "ranks")
_BOOLS = ("bias", "affine", "track_running_stats", "elementwise_affine")
_CHOICES = {"padding_mode": ("zeros", "reflect", "replicate", "circular"), "kind": ("tucker2", "separable"),
            "mode": ("tile", "mean")}
_CONV_DIMS = {"Conv1d": 1, "Conv2d": 2, "FactorizedConv2d": 2}


def _inner_arg(args: dict, key: str, default):
    inner = args.get("inner")
    v = inner.get("args", {}).get(key) if isinstance(inner, dict) and isinstance(inner.get("args"), dict) else None
    return v if _int(v) else default


def _check_args(where: str, kind, args) -> None:
    if not isinstance(kind, str) or not isinstance(args, dict):
        raise _fail(where, "a module record", "an object with a type name and an args object", (kind, args))
    dims = _CONV_DIMS.get(kind)
    for key, v in args.items():
        if key in _POS and not _int(v):
            raise _fail(where, key, "an integer in [1, 2**31]", v)
        if key in _POS_LISTS and not (isinstance(v, list) and (v or key == "ranks") and all(_int(x) for x in v)):
            raise _fail(where, key, "a list of integers in [1, 2**31]", v)
        pads = isinstance(v, list) and all(_int(x, 0) for x in v)
        if key == "padding" and not (_one_of(v, ("same", "valid")) or pads):
            raise _fail(where, key, "'same', 'valid' or a list of integers >= 0", v)
        if dims and key in ("kernel_size", "stride", "dilation", "padding") and isinstance(v, list) and len(v) != dims:
            raise _fail(where, key, f"a list of {dims} for {kind}", v)
        if key in _BOOLS and type(v) is not bool:
            raise _fail(where, key, "true or false", v)
        if key in _CHOICES and not _one_of(v, _CHOICES[key]):
            raise _fail(where, key, f"one of {', '.join(_CHOICES[key])}", v)
        if key == "eps" and not (type(v) in (int, float) and 0 < v < 1):
            raise _fail(where, key, "a number in (0, 1)", v)
        if key == "momentum" and not (v is None or type(v) in (int, float) and 0 <= v <= 1):
            raise _fail(where, key, "null or a number in [0, 1]", v)
        if key == "padding_idx" and not (v is None or _int(v, -BIG)):
            raise _fail(where, key, "null or an integer", v)
        if key == "block" and v & (v - 1) or key == "block" and _inner_arg(args, "in_features", v) % v:
            raise _fail(where, key, "a power of two that divides the layer's in_features", v)
        if key == "inner":
            _check_args(where, v.get("type") if isinstance(v, dict) else None,
                        v.get("args") if isinstance(v, dict) else None)


def check_record(r) -> None:
    """BitladderError naming the first field of a structure record (``{name, type, args}``) that is wrong."""
    name = r.get("name") if isinstance(r, dict) else None
    if not isinstance(name, str) or not name or not _MODULE.fullmatch(name):  # '' would replace the model
        raise _fail("structure", "each record", "an object with a module path 'name', a 'type' and 'args'", r)
    _check_args(f"structure record {name!r}", r.get("type"), r.get("args"))


def check_meta(meta: dict) -> None:
    """BitladderError naming the first field of ``meta`` (a parsed ``bitladder`` metadata object) that no
    artifact bitladder writes could hold; the records of reshaped modules are checked by :func:`check_record`
    when :func:`bitladder.io.structure.rebuild` reads them."""
    source = meta.get("source")
    if source is not None and not (isinstance(source, str) and (_WORD.fullmatch(source) or _HF.fullmatch(source))):
        raise _fail("metadata", "source", "null or a model name (or hf:/absolute/folder)", source)
    config = meta.get("config")
    if config is not None and not (isinstance(config, dict) and _WORD.fullmatch(str(config.get("type", "x")))):
        raise _fail("metadata", "config", "null or an object whose type is a config name", config)
    structure = meta.get("structure")
    if structure is not None and not isinstance(structure, list):
        raise _fail("metadata", "structure", "a list of module records", structure)
    for name, lm in meta["layers"].items():
        _check_layer(name, lm)
