"""Calibration: feed data block by block and collect what each layer sees.

The repeated blocks of a model (the children of its longest ``nn.ModuleList``, e.g. transformer
layers) are processed one at a time: the block's inputs are captured once, its layers are
quantised group by group (layers fed the same tensor — q, k, v — form one group; each group sees
the outputs of the already-quantised groups before it), then the quantised block's outputs become
the next block's inputs. Peak memory is one block's activations, not the model's. A model without
repeated blocks is one block.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.select import run


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the repeated blocks: the children of the longest ModuleList (none: [])."""
    best: tuple[int, str] = (0, "")
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > best[0]:
            best = (len(m), name)
    if best[0] < 2:
        return []
    return [f"{best[1]}.{i}" for i in range(best[0])]


def row_mask(batch: Any) -> torch.Tensor | None:
    """The attention mask of a tokenised batch: rows of padding are left out of statistics."""
    return batch.get("attention_mask") if isinstance(batch, dict) else None


@torch.no_grad()
def capture_inputs(model: nn.Module, block: nn.Module, batches: list[Any]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) ``block`` is called with for each calibration batch."""
    got: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        got.append((args, kwargs))
        raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, b in enumerate(batches):
            try:
                run(model, b)
            except _Stop:
                pass
            except Exception as e:  # shapes or dtypes the model does not accept
                raise _unfit(i, e) from None
    finally:
        h.remove()
    return got


def _short(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _unfit(i: int, e: Exception) -> BitladderError:
    """The error for calibration batch ``i`` failing with ``e``: out of memory is said as such (a smaller batch
    or a streamed run helps), anything else is a batch the model does not accept."""
    if isinstance(e, MemoryError) or "can't allocate memory" in str(e):
        return BitladderError(f"out of memory running calibration batch {i} ({_short(e)}); use smaller "
                              "calibration batches, or stream the model block by block (bitladder stream)")
    return BitladderError(f"calibration batch {i} does not fit the model: {_short(e)}")


def first_output(out: Any) -> torch.Tensor:
    """A block's output tensor (transformers blocks may return a tuple)."""
    return out[0] if isinstance(out, tuple | list) else out


def as_calls(batches: list[Any]) -> list[tuple[tuple, dict]]:
    """Calibration batches as ``(args, kwargs)`` calls of the whole model (dicts pass as keywords)."""
    return [((b,), {}) if not isinstance(b, dict) else ((), b) for b in batches]


def advance(inp: tuple[tuple, dict], out: torch.Tensor) -> tuple[tuple, dict]:
    """A block's call ``inp`` with its hidden states replaced by ``out`` (the next block's input)."""
    args, kwargs = inp
    if args:
        return (out, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": out}


class Collector(abc.ABC):
    """Accumulates what one layer receives; subclasses keep the statistic a method needs."""

    by_input = False  # True where the state is a function of the rows taken alone (layers fed one tensor share)

    def same_setup(self, other: "Collector") -> bool:
        """Whether ``other`` was built with the same settings, so that one can stand for both."""
        return False

    @abc.abstractmethod
    def update(self, x: torch.Tensor) -> None:  # x: (rows, K) with padding rows removed
        """Take one batch of input rows."""


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows matching the weight's (C, K) view (convolutions unfolded)."""
    kernel = getattr(module, "kernel_size", None)  # float or quantised convolutions
    if kernel is not None and len(kernel) == 2:
        cols = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if kernel is not None and len(kernel) == 1:
        cols = nn.functional.unfold(x.unsqueeze(-1), (module.kernel_size[0], 1), (module.dilation[0], 1),
                                    (module.padding[0], 0), (module.stride[0], 1))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def blockwise(model: nn.Module, names: list[str], batches: list[Any],
              make: Callable[[str, nn.Module], Collector], apply: Callable, group: bool = False) -> list[str]:
    """Collect for every layer in ``names`` and call ``apply(name, module, collector)`` once its inputs
    are final.

    Layers that read the same input tensor (attention's q, k, v) are collected and applied together, one
    after the other; with ``group`` ``apply`` is instead called once per such group, with the list of
    ``(name, module, collector)``. Returns the layers that never received input (they are left to the
    caller).
    """
    blocks = find_blocks(model)
    in_block = {b: [n for n in names if n.startswith(b + ".")] for b in blocks}
    outside = [n for n in names if not any(n in v for v in in_block.values())]
    if blocks and any(in_block.values()):
        inputs = capture_inputs(model, model.get_submodule(blocks[0]), batches)
        masks = [row_mask(b) for b in batches]
        for b in blocks:
            block = model.get_submodule(b)
            groups(block, in_block[b], inputs, masks, make, apply, b + ".", group)
            with torch.no_grad():
                inputs = [advance(i, first_output(block(*i[0], **i[1]))) for i in inputs]
    idle = []
    if outside:
        idle = groups(model, outside, as_calls(batches), [row_mask(b) for b in batches], make, apply, "", group)
    return idle


def groups(root: nn.Module, names: list[str], inputs, masks, make, apply, prefix: str, group: bool) -> list[str]:
    """Quantise ``names`` (inside ``root``, named with ``prefix``) group by group, re-running ``root`` on
    ``inputs`` (its ``(args, kwargs)`` calls; ``masks``: padding rows per call) between groups; returns the
    names no input reached.

    The first batch of each pass runs in full and names the group (the layers fed the first layer's input);
    later batches feed only that group and stop ``root`` right after the group's last layer, since nothing
    after it is used before the group is quantised. Only the group's layers get a collector (a 2816-wide GPTQ
    Hessian is 63 MB). Siblings whose collectors are ``by_input`` share one.
    """
    pending = list(names)
    while pending:
        modules = {n: root.get_submodule(n[len(prefix):]) for n in pending}
        collectors: dict[str, Any] = {}  # made on a layer's first input: only the group's layers get one
        calls: list[tuple[str, int]] = []  # the first batch's (layer, id of its input), in call order
        alive: list[torch.Tensor] = []  # the first batch's inputs: their ids stay unique while compared
        # "fed" maps (collector id, input id) to the input, which keeps that id from being reused in the batch
        state: dict[str, Any] = {"batch": 0, "mask": None, "left": None, "fed": {}}

        def hook_for(n: str, module: nn.Module):
            def hook(_m, args):
                x = args[0]
                if state["batch"] == 0:
                    calls.append((n, id(x)))
                    alive.append(x)
                    if id(x) != calls[0][1]:
                        return  # not fed the group's input: collected on a later pass
                elif state["left"] <= 0:
                    raise _Stop  # past the group's last layer
                else:
                    state["left"] -= 1
                    if n not in siblings:
                        return
                if n not in collectors:
                    collectors[n] = make(n, module)
                c = collectors[n]
                if (id(c), id(x)) in state["fed"]:
                    return  # a shared collector already took this input
                state["fed"][(id(c), id(x))] = x
                rows = layer_rows(module, x)
                m = state["mask"]
                if m is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(m.shape):
                    rows = rows[m.reshape(-1).bool()]
                c.update(rows.float())
            return hook

        siblings: list[str] = []
        hooks = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in modules.items()]
        try:
            with torch.no_grad():
                for i, ((args, kwargs), m) in enumerate(zip(inputs, masks)):
                    if i == 1:
                        if not calls:
                            break
                        siblings = _siblings(calls)
                        _share(collectors, siblings, modules)
                    state.update(batch=i, mask=m, fed={}, left=_last_call(calls, siblings) + 1)
                    try:
                        root(*args, **kwargs)
                    except _Stop:
                        pass
                    except Exception as e:
                        raise _unfit(i, e) from None
        finally:
            for h in hooks:
                h.remove()
        if not calls:
            return pending  # none of these layers is reached by the data
        siblings = siblings or _siblings(calls)
        if group:
            apply([(n, modules[n], collectors[n]) for n in siblings])
        else:
            for n in siblings:
                apply(n, modules[n], collectors[n])
        pending = [n for n in pending if n not in siblings]
    return []


def _siblings(calls: list[tuple[str, int]]) -> list[str]:
    """The layers fed the same tensor as the first layer called."""
    return list(dict.fromkeys(n for n, i in calls if i == calls[0][1]))


def _last_call(calls: list[tuple[str, int]], siblings: list[str]) -> int:
    """Index of the last call to a sibling in the first batch (-1 before the group is known)."""
    return max((k for k, (n, _) in enumerate(calls) if n in siblings), default=-1)


def _share(collectors: dict[str, "Collector"], siblings: list[str], modules: dict[str, nn.Module]) -> None:
    """Siblings share the first one's collector where the collector is a function of its input alone and the
    layers see that input as the same rows (they have taken the same rows so far, so one can go on for all)."""
    lead = collectors[siblings[0]]
    for n in siblings[1:]:
        c = collectors[n]
        if (type(c) is type(lead) and lead.by_input and lead.same_setup(c)
                and _row_view(modules[n]) == _row_view(modules[siblings[0]])):
            collectors[n] = lead


def _row_view(module: nn.Module) -> tuple:
    """What decides how :func:`layer_rows` turns an input into rows (type and convolution geometry)."""
    return (type(module), *(getattr(module, a, None) for a in ("kernel_size", "dilation", "padding", "stride")))


class SampleCollector(Collector):
    """A strided sample of input rows (at most ``keep``) plus per-column max |x|, mean |x|, mean x and
    mean x²."""

    by_input = True

    def __init__(self, keep: int = 2048) -> None:
        self.keep, self.rows, self.n = keep, [], 0
        self.abs_sum = self.sum = self.sq_sum = self.amax = None

    def update(self, x: torch.Tensor) -> None:
        x = x.float()
        a, s, q, mx = x.abs().sum(0), x.sum(0), x.pow(2).sum(0), x.abs().amax(0)
        if self.sum is None:
            self.abs_sum, self.sum, self.sq_sum, self.amax = a, s, q, mx
        else:
            self.abs_sum, self.sum, self.sq_sum = self.abs_sum + a, self.sum + s, self.sq_sum + q
            self.amax = torch.maximum(self.amax, mx)
        self.n += x.shape[0]
        self.rows.append(x[:: max(1, x.shape[0] // 512)])

    def same_setup(self, other: Collector) -> bool:
        return isinstance(other, SampleCollector) and other.keep == self.keep

    def sample(self) -> torch.Tensor:
        """The kept input rows, evenly strided down to about ``keep``."""
        r = torch.cat(self.rows)
        return r[:: max(1, -(-r.shape[0] // self.keep))]

    @property
    def mean_abs(self) -> torch.Tensor:
        """Mean |x| per input channel over the collected rows."""
        return self.abs_sum / max(self.n, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean x per input channel over the collected rows."""
        return self.sum / max(self.n, 1)

    @property
    def mean_sq(self) -> torch.Tensor:
        """Mean x**2 per input channel over the collected rows."""
        return self.sq_sum / max(self.n, 1)
