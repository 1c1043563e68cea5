"""Before/after model summary: parameters and bytes per weighted layer, float model against compressed.

Bytes of a quantised layer are its packed weight (codes, scales, zero points, masks); of a float layer
its weight and bias at their storage dtype. Layers removed or factorised show their new parameters.
"""

from __future__ import annotations

from torch import nn

from bitladder.nn.base import QuantModule


def _layers(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantModule):
            qt = m.qweight
            bias = getattr(m, "bias", None)
            params = qt.numel + (bias.numel() if bias is not None else 0)
            nbytes = qt.nbytes + (bias.numel() * bias.element_size() if bias is not None else 0)
            out[name] = {"type": type(m).__name__, "params": params, "bytes": nbytes, "format": qt.qtype.name}
        elif isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding) and not any(
                name.startswith(k + ".") for k in out):
            ps = [p for p in (m.weight, getattr(m, "bias", None)) if p is not None]
            out[name] = {"type": type(m).__name__, "params": sum(p.numel() for p in ps),
                         "bytes": sum(p.numel() * p.element_size() for p in ps), "format": str(m.weight.dtype)[6:]}
    return out


def summarize(before: nn.Module, after: nn.Module) -> list[dict]:
    """Rows {layer, type/params/bytes before and after, format}; a factorised layer's halves fold into it."""
    b, a = _layers(before), _layers(after)
    rows = []
    for name, info in b.items():
        parts = {k: v for k, v in a.items() if k == name or k.startswith(name + ".")}
        rows.append({"layer": name, "params_before": info["params"], "bytes_before": info["bytes"],
                     "params_after": sum(v["params"] for v in parts.values()),
                     "bytes_after": sum(v["bytes"] for v in parts.values()),
                     "format_after": ", ".join(sorted({v["format"] for v in parts.values()})) or "removed"})
    return rows
