"""The per-op rules of the channel graph: each takes a traced node and returns the track of its output.

A rule is ``rule(node, spaces, tracks, modules) -> Track | None``; None means the output carries no pruned
channels. Layers with a handler add members (``LAYERS``, keyed by handler class); pass-through ops keep the
track; element-wise ops of two values couple their spaces (a residual add); a concatenation places its
inputs' segments side by side; reshapes, transposes and reductions move the dim. ``unknown`` freezes every
group a node reaches when no rule models it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from bitladder.methods.prune.groups import Spaces
from bitladder.methods.prune.handlers import Attention, Dense, Norm, handler_for


@dataclass(frozen=True)
class Track:
    """Pruned channels of a value: on ``dim``, made of ``segs`` = ((space, offset, block), ...)."""

    dim: int
    segs: tuple[tuple[int, int, int], ...]

    def spaces(self) -> list[int]:
        """The spaces this value carries."""
        return [s for s, _, _ in self.segs]


def _shape(n) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _describe(node: fx.Node, mods: dict) -> str:
    if node.op == "call_module":
        return f"{type(mods[node.target]).__name__} {node.target!r}"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name} ({node.name})"


def _freeze(sp: Spaces, tracks: dict, nodes, reason: str) -> None:
    for n in nodes:
        for s in tracks[n].spaces() if n in tracks else []:
            sp.freeze(s, reason)


def unknown(node, sp, tracks, mods=None, why: str = "an op pruning does not model") -> None:
    """Freeze every group ``node`` reaches: the reason names the op."""
    _freeze(sp, tracks, _nodes(node), f"reaches {_describe(node, mods or {})}: {why}")
    return None


def output(node, sp, tracks, mods):
    """The model's output: everything it carries stays whole."""
    _freeze(sp, tracks, _nodes(node), "its output is the model's output")


def index(node, sp, tracks, mods):
    """``x.shape`` carries nothing; indexing a pruned value is not modelled."""
    if node.target is getattr:  # x.shape, x.dtype: nothing flows
        return None
    return unknown(node, sp, tracks, mods, "indexing a pruned value") if node.args[0] in tracks else None


def passthrough(node, sp, tracks, mods):
    """Element-wise op of one value: the track passes unchanged."""
    x = node.args[0] if node.args else None
    if isinstance(x, fx.Node) and x in tracks and _shape(x) is not None and _shape(x) == _shape(node):
        _freeze(sp, tracks, [a for a in _nodes(node)[1:] if a in tracks], f"an argument of {_describe(node, mods)}")
        return tracks[x]
    return unknown(node, sp, tracks, mods) if any(a in tracks for a in _nodes(node)) else None


def pool(node, sp, tracks, mods):
    """Pooling / resizing over the dims after the channel dim (channels-first)."""
    t = tracks.get(node.args[0])
    if t is None:
        return None
    return Track(1, t.segs) if t.dim == 1 else unknown(node, sp, tracks, mods, "pools over the channel dim")


def binary(node, sp, tracks, mods):
    """Element-wise op: tracked operands must line up (their spaces are coupled); others must broadcast."""
    out = _shape(node)
    operands = [a for a in _nodes(node) if _shape(a) is not None]
    tracked = [a for a in operands if a in tracks]
    if not tracked or out is None:
        return None
    dims = {tracks[a].dim + len(out) - len(_shape(a)) for a in tracked}
    first = tracks[tracked[0]]
    problem = None if len(dims) == 1 else "operands carry channels on different dims"
    layout = [(o, sp.size[s] * b, b) for s, o, b in first.segs]
    for a in tracked[1:]:
        if [(o, sp.size[s] * b, b) for s, o, b in tracks[a].segs] != layout:
            problem = problem or "operands are concatenated differently"
    dim = dims.pop() if len(dims) == 1 else 0
    for a in operands:
        pos = dim - (len(out) - len(_shape(a)))
        if a not in tracks and pos >= 0 and _shape(a)[pos] != 1:
            problem = problem or f"{a.name} has channels that cannot shrink"
    if problem:
        return unknown(node, sp, tracks, mods, problem)
    for a in tracked[1:]:
        for (s, _, _), (s2, _, _) in zip(first.segs, tracks[a].segs):
            sp.couple(s, s2)
    return Track(dim, first.segs)


def cat(node, sp, tracks, mods):
    """Concatenation along the channel dim: the inputs' segments side by side, at their offsets."""
    xs = node.args[0]
    out = _shape(node)
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(out)
    tracked = [x for x in xs if x in tracks]
    if not tracked:
        return None
    if any(tracks[x].dim != dim for x in tracked):
        return binary(node, sp, tracks, mods)  # along another dim: the inputs must agree channel for channel
    segs, off = [], 0
    for x in xs:
        width = _shape(x)[dim]
        if x in tracks:
            segs += [(s, o + off, b) for s, o, b in tracks[x].segs]
        else:
            segs.append((sp.new(width, reason=f"concatenated with {x.name}, which cannot shrink"), off, 1))
        off += width
    return Track(dim, tuple(segs))


def _fixed(node: fx.Node, j: int, rank: int) -> bool:
    if node.target not in ("view", "reshape") and getattr(node.target, "__name__", "") != "reshape":
        return False
    shape = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], list | tuple) else node.args[1:]
    return len(shape) == rank and isinstance(shape[j], int) and shape[j] != -1


def reshape(node, sp, tracks, mods):
    """flatten / view / reshape / (un)squeeze: the dim survives whole, or merged with the dims after it."""
    x = node.args[0]
    t = tracks.get(x)
    if t is None:
        return None
    ins, outs = _shape(x), _shape(node)
    c, size = t.dim, _shape(x)[t.dim]
    pre, suf = math.prod(ins[:c]), math.prod(ins[c + 1 :])
    for j in range(len(outs)):
        if math.prod(outs[:j]) == pre and outs[j] % size == 0 and outs[j] // size * math.prod(outs[j + 1 :]) == suf:
            break
    else:
        return unknown(node, sp, tracks, mods, "it splits or mixes the channel dim")
    if _fixed(node, j, len(outs)):
        return unknown(node, sp, tracks, mods, "it sets a fixed size on the channel dim")
    k = outs[j] // size
    return Track(j, tuple((s, o * k, b * k) for s, o, b in t.segs))


def _dims(node: fx.Node) -> list:
    rest = node.args[1:] if len(node.args) > 1 else list(node.kwargs.values())
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], list | tuple) else list(rest)


def transpose(node, sp, tracks, mods):
    """transpose / permute / t: the channel dim moves."""
    t = tracks.get(node.args[0])
    if t is None:
        return None
    rank = len(_shape(node.args[0]))
    dims = [d % rank for d in _dims(node)] if node.target != "t" else [0, 1]
    if node.target == "permute" or getattr(node.target, "__name__", "") == "permute":
        return Track(dims.index(t.dim), t.segs)
    a, b = dims[:2]
    return Track(b if t.dim == a else a if t.dim == b else t.dim, t.segs)


def reduce(node, sp, tracks, mods):
    """mean / sum / amax over dims that are not the channel dim (a squeeze-excite pool)."""
    t = tracks.get(node.args[0])
    if t is None:
        return None
    rank = len(_shape(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims or range(rank))]
    if t.dim in dims:
        return unknown(node, sp, tracks, mods, "it reduces over the channel dim")
    return Track(t.dim if keep else t.dim - sum(d < t.dim for d in dims), t.segs)


def softmax(node, sp, tracks, mods):
    """softmax over another dim passes; over the channel dim it is not modelled."""
    t = tracks.get(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if t is None or dim is None:
        return unknown(node, sp, tracks, mods) if t else None
    return t if dim % len(_shape(node)) != t.dim else unknown(node, sp, tracks, mods, "it normalises over channels")


def dense(node, sp, tracks, mods):
    """Linear / Conv: inputs are "in" members, outputs a new space; grouped convolutions couple the two."""
    name, m = node.target, mods[node.target]
    x = node.args[0]
    rank = len(_shape(x))
    want = rank - 1 if isinstance(m, nn.Linear) else rank - 1 - len(m.kernel_size)
    t = tracks.get(x)
    if t is not None and (t.dim != want or len(node.args) > 1):
        unknown(node, sp, tracks, mods, "it reads the pruned channels on another dim")
        t = None
    out_dim = len(_shape(node)) - 1 if isinstance(m, nn.Linear) else want
    groups = getattr(m, "groups", 1)
    if groups == 1:
        for s, o, b in t.segs if t else ():
            sp.add(name, "in", o, b, s)
        s = sp.new(m.weight.shape[0])
        sp.add(name, "out", 0, 1, s)
        return Track(out_dim, ((s, 0, 1),))
    if t is None or any(b != 1 for _, _, b in t.segs) or (groups != m.in_channels and len(t.segs) != 1):
        if t is not None:
            unknown(node, sp, tracks, mods, f"grouped convolution of {groups} groups over mixed inputs")
        s = sp.new(m.out_channels, reason=f"grouped convolution {name!r} reads channels that cannot shrink")
        sp.add(name, "out", 0, 1, s)
        return Track(out_dim, ((s, 0, 1),))
    mult = m.out_channels // m.in_channels if groups == m.in_channels else None
    segs = []
    for s, o, _ in t.segs:  # depthwise: each input segment with its own outputs; grouped: whole groups
        s2 = sp.new(sp.size[s] * mult if mult else m.out_channels)
        sp.couple(s, s2, units=None if mult else groups)
        sp.add(name, "in", o, 1, s)
        sp.add(name, "out", o * (mult or 1), 1, s2)
        segs.append((s2, o * (mult or 1), 1))
    return Track(out_dim, tuple(segs))


def norm(node, sp, tracks, mods):
    """BatchNorm on dim 1, LayerNorm over the last dim: "chan" members, the track passes."""
    name, m = node.target, mods[node.target]
    t = tracks.get(node.args[0])
    if t is None:
        return None
    rank = len(_shape(node.args[0]))
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            return unknown(node, sp, tracks, mods, "it normalises over several dims")
        if t.dim != rank - 1:
            return t  # it normalises another dim: each channel keeps its own values
    elif t.dim != 1:
        return unknown(node, sp, tracks, mods, "it normalises another dim")
    for s, o, b in t.segs:
        sp.add(name, "chan", o, b, s)
    return t


def attention(node, sp, tracks, mods):
    """A registered attention block: "in" members, its heads a space of whole heads, "out" a new space."""
    name, m = node.target, mods[node.target]
    h = handler_for(m)
    x = node.args[0]
    _freeze(sp, tracks, [a for a in _nodes(node) if a is not x], f"an extra input of attention {name!r}")
    t = tracks.get(x)
    rank = len(_shape(x))
    if t is not None and t.dim != rank - 1:
        unknown(node, sp, tracks, mods, "attention reads the pruned channels on another dim")
        t = None
    for s, o, b in t.segs if t else ():
        sp.add(name, "in", o, b, s)
    q, _, _, o_lin = h.parts(m)
    heads = sp.new(q.out_features)
    sp.couple(heads, heads, units=q.out_features // h.width(m))
    sp.add(name, "heads", 0, 1, heads)
    s = sp.new(o_lin.out_features)
    sp.add(name, "out", 0, 1, s)
    return Track(len(_shape(node)) - 1, ((s, 0, 1),))


LAYERS = {Dense: dense, Norm: norm, Attention: attention}
MODULES = {**{k: passthrough for k in (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
                                        nn.LeakyReLU, nn.Dropout, nn.Identity)},
           **{k: pool for k in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)},
           nn.Flatten: reshape}
_UNARY = ("relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "leaky_relu", "dropout", "contiguous",
          "clone", "float", "to", "detach", "neg", "abs", "exp")
FUNCTIONS = {**dict.fromkeys(_UNARY, passthrough),
             **dict.fromkeys(("add", "mul", "sub", "truediv", "iadd", "imul", "div"), binary),
             **dict.fromkeys(("max_pool1d", "max_pool2d", "_max_pool1d", "_max_pool2d", "avg_pool1d", "avg_pool2d",
                              "adaptive_avg_pool1d", "adaptive_avg_pool2d", "interpolate"), pool),
             **dict.fromkeys(("cat", "concat", "concatenate"), cat),
             **dict.fromkeys(("flatten", "reshape", "unsqueeze", "squeeze"), reshape),
             "transpose": transpose, "permute": transpose,
             **dict.fromkeys(("mean", "sum", "amax"), reduce), "softmax": softmax}
METHODS = {**dict.fromkeys(_UNARY, passthrough),
           **dict.fromkeys(("add", "mul", "sub", "div", "add_", "mul_"), binary),
           **dict.fromkeys(("flatten", "view", "reshape", "unsqueeze", "squeeze"), reshape),
           **dict.fromkeys(("transpose", "permute", "t"), transpose),
           **dict.fromkeys(("mean", "sum", "amax"), reduce), "softmax": softmax, "size": lambda *a: None,
           "dim": lambda *a: None}
