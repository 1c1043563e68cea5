"""Build channel groups from a torch.fx trace with shape propagation.

Each traced value that carries pruned channels has a *track*: the dim they lie on and the segments that make
it up ``(space, offset, block)`` — one for a layer's output, several after a concatenation, ``block > 1``
after a flatten. Rules per op (tables below) move, merge or freeze tracks; an op that touches a tracked dim
in a way no rule models freezes the groups it reaches with the node's name as the reason, so the pruned model
always runs. Leaves of the trace: every layer with a handler (an attention block is one node).

>>> import torch
>>> from torch import nn
>>> _, sp = build(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
>>> [(sp.units(r), sp.reason.get(r)) for r in sp.roots()]
[(8, None), (2, "its output is the model's output")]
"""

from __future__ import annotations

import operator
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from bitladder.errors import BitladderError
from bitladder.methods.prune import wiring
from bitladder.methods.prune.groups import Spaces
from bitladder.methods.prune.handlers import handler_for


class _Tracer(fx.Tracer):
    """Stops at every layer with a handler and remembers the innermost layer being traced when it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return handler_for(m) is not None or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed = self.failed or self.path_of_module(m)
            raise


def trace(model: nn.Module, example) -> fx.GraphModule:
    """``model`` traced with shapes from ``example``; BitladderError naming the layer that stopped the trace."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = f"layer {tracer.failed!r}" if tracer.failed else "the model"
        msg = str(e).splitlines()[0][:120] if str(e) else ""
        raise BitladderError(f"cannot trace {where} with torch.fx ({type(e).__name__}: {msg}); structured "
                             "pruning needs a traceable forward") from None
    gm = fx.GraphModule(model, graph)
    try:
        ShapeProp(gm).propagate(*(example if isinstance(example, tuple) else (example,)))
    except Exception as e:
        raise BitladderError(f"the traced model does not run on the example input ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return gm


def build(model: nn.Module, example) -> tuple[fx.GraphModule, Spaces]:
    """(the traced model, its channel groups)."""
    gm = trace(model, example)
    sp = Spaces()
    mods = dict(gm.named_modules())
    tracks: dict[fx.Node, wiring.Track] = {}
    for node in gm.graph.nodes:
        rule = _rule(node, mods)
        out = rule(node, sp, tracks, mods) if rule else wiring.unknown(node, sp, tracks)
        if out is not None:
            tracks[node] = out
    return gm, sp


def _rule(node: fx.Node, mods: dict):
    if node.op == "call_module":
        m = mods[node.target]
        h = handler_for(m)
        if h is not None:
            return wiring.LAYERS.get(type(h))
        return next((r for kind, r in wiring.MODULES.items() if isinstance(m, kind)), None)
    if node.op == "call_function":
        if node.target in (getattr, operator.getitem) or node.target is getattr(torch, "_assert", None):
            return wiring.index
        return wiring.FUNCTIONS.get(getattr(node.target, "__name__", ""))
    if node.op == "call_method":
        return wiring.METHODS.get(node.target)
    if node.op in ("placeholder", "get_attr"):
        return lambda *_: None
    if node.op == "output":
        return wiring.output
    return None
