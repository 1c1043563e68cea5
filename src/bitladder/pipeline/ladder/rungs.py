"""Rung names -> configs.

Grammar: ``BASE[-gN|-pc|-pt][-sym|-asym][-METHOD][-aN[d]][-rN]``. BASE is any format of the table
(:mod:`bitladder.formats.qtypes`) whose config takes it: fp64 .. fp8_e5m2, int8..int2, ternary, binary,
cb1..cb8 (a k-means codebook of 2**N values per channel), nf4 (NormalFloat). ``-gN`` groups of N input
elements, ``-pc`` per output channel (the default), ``-pt`` per tensor; integers are symmetric unless
``-asym``. METHOD is a registered method's rung name (rtn by default, clip, gptq, awq, hqq, adaround);
``-a8`` adds static 8-bit activations (``-a8d`` dynamic, per token); ``-rN`` rotates each Linear's input by
a block-Hadamard of up to N channels first; ``-tune`` then trains each block's codes and scales to reproduce
the float block (:class:`~bitladder.methods.quantize.methods.Tune`).

>>> from bitladder.methods.quantize.configs import Int
>>> parse_rung("int4-g64") == Int(bits=4, group=64)
True
>>> parse_rung("int2-g32-asym").qtype, parse_rung("cb4").qtype
('uint2', 'cb4')
>>> cfg = parse_rung("int4-g64-asym-gptq-a8")
>>> type(cfg.method).__name__, cfg.act.bits
('GPTQ', 8)
>>> parse_rung("int8-a8d-r32").rotate
32
>>> parse_rung("nf4-g64").qtype
'nf4'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import QTYPES
from bitladder.methods.quantize.configs import FOR_KIND, Format, QuantConfig
from bitladder.methods.quantize.methods import RUNG_METHODS, Act, Tune

# every format of the table a config takes, by name: a new format or kind is a rung without an edit here
BASES = {name: cls for name, q in QTYPES.items() if (cls := FOR_KIND.get(q.kind, Format)).takes(q)}
_RUNG = re.compile(r"^(?P<base>[a-z0-9_]+?)(?:-(?P<gran>g\d+|pc|pt))?(?:-(?P<sym>sym|asym))?"
                   rf"(?:-(?P<method>{'|'.join(RUNG_METHODS)}))?(?:-a(?P<act>[2-8])(?P<dyn>d)?)?(?:-r(?P<rot>\d+))?(?:-(?P<tune>tune))?$")
ACCEPTED = (f"{' '.join(BASES)}, optionally followed by -gN (group size), -pc or -pt, then -sym or -asym, "
            f"then a method ({', '.join(RUNG_METHODS)}), then -a8 (static 8-bit activations) or -a8d (dynamic, "
            "int8 activations quantised per token at each call, on the fbgemm kernel), then -rN (a Hadamard "
            "rotation of each Linear's input in blocks of up to N channels), then -tune (block-wise reconstruction)")


def parse_rung(name: str) -> QuantConfig:
    """The quantisation config a rung name such as ``int4-g32-asym`` stands for; BitladderError if unknown.

    The one place a rung string is read: commands parse their rungs once, up front, and pass configs on."""
    m = _RUNG.match(name.strip())
    if not m or m["base"] not in BASES:
        raise BitladderError(f"unknown rung {name!r}; accepted: {ACCEPTED}")
    cls = BASES[m["base"]]
    kw: dict = {}
    gran = m["gran"]
    if gran == "pt":
        kw["granularity"] = "tensor"
    elif gran and gran.startswith("g"):
        kw["group"] = int(gran[1:])
        if kw["group"] < 1:
            raise BitladderError(f"rung {name!r}: group size must be at least 1")
    build = {"symmetric": lambda v: v != "asym", "method": lambda v: RUNG_METHODS[v](),
             "act": lambda v: Act(bits=int(v), dynamic=bool(m["dyn"])), "rotate": int,
             "tune": lambda v: Tune()}
    for key, part in (("symmetric", "sym"), ("method", "method"), ("act", "act"), ("rotate", "rot"), ("tune", "tune")):
        if m[part] is None:
            continue
        if key not in cls.rung_options:
            raise BitladderError(f"rung {name!r}: -sym/-asym, methods, -aN, -rN and -tune apply to integer rungs only")
        kw[key] = build[key](m[part])
    try:
        return cls.from_rung(QTYPES[m["base"]], **kw)
    except BitladderError as e:
        raise BitladderError(f"rung {name!r}: {e}") from None


def parse_rungs(rungs: Iterable[str] | Mapping[str, QuantConfig]) -> dict[str, QuantConfig]:
    """Every rung name parsed, in order, before any work starts; a mapping already parsed passes through."""
    if isinstance(rungs, Mapping):
        return dict(rungs)
    return {r.strip(): parse_rung(r) for r in rungs}
