"""Rung names -> configs.

Grammar: ``BASE[-gN|-pc|-pt][-sym|-asym][-METHOD][-aN]``. BASE is one of fp64 fp32 fp16 bf16 fp8_e4m3 fp8_e5m2
int8..int2 ternary binary, or cb1..cb8 (a k-means codebook of 2**N values per channel). ``-gN`` groups of N input elements, ``-pc`` per output channel (the
default), ``-pt`` per tensor; integers are symmetric unless ``-asym``. METHOD is rtn (default), clip
(RTN with clipping search), gptq, awq, hqq or adaround; ``-a8`` adds static 8-bit activations (``-a8d``
dynamic, per token); ``-rN`` rotates each Linear's input by a block-Hadamard of up to N channels first.

>>> parse_rung("int4-g64") == Int(bits=4, group=64)
True
>>> parse_rung("int2-g32-asym").qtype, parse_rung("cb4").qtype
('uint2', 'cb4')
>>> cfg = parse_rung("int4-g64-asym-gptq-a8")
>>> type(cfg.method).__name__, cfg.act.bits
('GPTQ', 8)
>>> parse_rung("int8-a8d-r32").rotate
32
"""

from __future__ import annotations

import re

from bitladder.errors import BitladderError
from bitladder.methods.quantize.configs import FLOAT_FORMATS, Binary, Codebook, Float, Int, QuantConfig, Ternary
from bitladder.methods.quantize.methods import AWQ, GPTQ, HQQ, RTN, Act, AdaRound

BASES = (*FLOAT_FORMATS, "int8", "int7", "int6", "int5", "int4", "int3", "int2", "ternary", "binary",
         *(f"cb{b}" for b in range(1, 9)))
METHODS = {"rtn": RTN, "clip": lambda: RTN(clip_search=True), "gptq": GPTQ, "awq": AWQ, "hqq": HQQ,
           "adaround": AdaRound}
_RUNG = re.compile(r"^(?P<base>[a-z0-9_]+?)(?:-(?P<gran>g\d+|pc|pt))?(?:-(?P<sym>sym|asym))?"
                   r"(?:-(?P<method>rtn|clip|gptq|awq|hqq|adaround))?(?:-a(?P<act>[2-8])(?P<dyn>d)?)?(?:-r(?P<rot>\d+))?$")
ACCEPTED = (f"{' '.join(BASES)}, optionally followed by -gN (group size), -pc or -pt, then -sym or -asym, "
            f"then a method ({', '.join(METHODS)}), then -a8 (static 8-bit activations) or -a8d (dynamic, "
            "int8 activations quantised per token at each call, on the fbgemm kernel), then -rN (a Hadamard "
            "rotation of each Linear's input in blocks of up to N channels)")


def parse_rung(name: str) -> QuantConfig:
    """The quantisation config a rung name such as ``int4-g32-asym`` stands for; BitladderError if unknown."""
    m = _RUNG.match(name.strip())
    if not m or m["base"] not in BASES:
        raise BitladderError(f"unknown rung {name!r}; accepted: {ACCEPTED}")
    base, gran, sym, method, act = m["base"], m["gran"], m["sym"], m["method"], m["act"]
    if (method or act or m["rot"]) and not base.startswith("int"):
        raise BitladderError(f"rung {name!r}: methods, -aN and -rN apply to integer rungs only")
    kw: dict = {}
    if gran == "pt":
        kw["granularity"] = "tensor"
    elif gran and gran.startswith("g"):
        kw["group"] = int(gran[1:])
        if kw["group"] < 1:
            raise BitladderError(f"rung {name!r}: group size must be at least 1")
    if base in FLOAT_FORMATS:
        if sym:
            raise BitladderError(f"rung {name!r}: -sym/-asym apply to integer rungs only")
        return Float(base, **kw)
    if base.startswith("int"):
        if method:
            kw["method"] = METHODS[method]()
        if act and m["dyn"]:
            kw["act"] = Act(bits=int(act), dynamic=True)
        elif act:
            kw["act"] = Act(bits=int(act))
        if m["rot"]:
            kw["rotate"] = int(m["rot"])
        return Int(bits=int(base[3:]), symmetric=sym != "asym", **kw)
    if sym:
        raise BitladderError(f"rung {name!r}: -sym/-asym apply to integer rungs only")
    if base.startswith("cb"):
        if "group" in kw:
            raise BitladderError(f"rung {name!r}: codebooks are per channel (-pc) or per tensor (-pt)")
        return Codebook(bits=int(base[2:]), **kw)
    return Ternary(**kw) if base == "ternary" else Binary(**kw)
