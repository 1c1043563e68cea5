"""Streamed post-training quantisation of a Hugging Face causal-LM folder, one decoder block in memory at a time.

The model is built on the ``meta`` device from config.json. The embedding is read from its shard, the
calibration batches run up to block 0 (:func:`~bitladder.methods.quantize.calibrate.capture_inputs`), and the
embedding is quantised and dropped. Then for each block: its weights are read (only the tensors it needs,
from whichever shard holds them), it is quantised with the same calibrated machinery as
:func:`bitladder.quantize` (:func:`~bitladder.methods.quantize.calibrate.groups` with the method's collectors),
the calibration activations go through the quantised block to become the next block's inputs (as the in-memory
path does), its packed tensors go to the work folder and the float block is dropped. Last the final norm and
``lm_head``. The artifact is then written tensor by tensor from the work folder
(:func:`~bitladder.io.stream_write.write_streamed`): the same bytes :func:`bitladder.io.artifact.save` writes
for the model quantised in memory with the same config and calibration. Peak memory: one float block, the
calibration activations and the embedding, plus the process itself.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.io.artifact import FORMAT_VERSION
from bitladder.io.hf_shards import Shards
from bitladder.io.st_read import TensorFile
from bitladder.io.stream_write import Entry, write_streamed
from bitladder.methods.quantize.api import _data_ready, check_calibration, check_finite, plan
from bitladder.methods.quantize.calibrate import advance, capture_inputs, first_output, groups, row_mask
from bitladder.methods.quantize.configs import CONFIG_TYPES
from bitladder.methods.quantize.dispatch import CALIBRATED, calibrated_apply
from bitladder.methods.quantize.methods import RTN
from bitladder.methods.quantize.swap import replace, swap
from bitladder.methods.quantize.transforms import active
from bitladder.nn.base import QuantModule
from bitladder.pipeline.stream.memory import give_back
from bitladder.pipeline.stream.work import Work, fingerprint
from bitladder.zoo import hf_folder

OnBlock = Callable[[int, int, float], None]  # (block index, blocks, seconds it took)


def _hidden(call: tuple[tuple, dict]) -> torch.Tensor:
    """The hidden states of a block call (positional, or the ``hidden_states`` keyword)."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


class _Head(nn.Module):
    """The final norm and the LM head: what follows the last block (named so ``lm_head`` matches ``lm.lm_head``)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))


def check_config(config, calib: list | None):
    """The config's method, after refusing what streaming cannot do (model-wide transforms, activations)."""
    if not isinstance(config, tuple(CONFIG_TYPES.values())):
        raise BitladderError(f"config must be one of {', '.join(CONFIG_TYPES)}; got {type(config).__name__}")
    steps = [s.name for s in active(config)]
    if steps or getattr(config, "act", None) is not None:
        raise BitladderError(f"streamed quantisation runs per-layer methods only; this config also asks for "
                             f"{', '.join(steps) or 'activation quantisation'} (quantise in memory for that)")
    method = getattr(config, "method", None) or RTN()
    if method.needs_data:
        if type(method) not in CALIBRATED:
            raise BitladderError(f"{type(method).__name__} cannot be streamed; accepted: "
                                 f"{', '.join(t.__name__ for t in CALIBRATED)} or data-free methods")
        check_calibration(calib, method)
    return method


def stream_quantize(folder: str | Path, config, calib: list[torch.Tensor] | None, out: str | Path,
                    on_block: OnBlock | None = None) -> Path:
    """Quantise the HF folder ``folder`` with ``config`` block by block and write the artifact ``out``.

    ``calib``: token-id batches (calibrated methods). A run killed part-way resumes from its last finished
    block when called again with the same inputs (the work folder ``OUT.work`` holds its state).
    """
    folder = hf_folder.folder_of(str(folder))
    method = check_config(config, calib)
    out = Path(out)
    if not out.parent.is_dir():
        raise BitladderError(f"output folder {out.parent} does not exist")
    shards = Shards(folder)  # a missing shard fails before transformers is imported
    model = hf_folder.skeleton(folder)
    lm = model.lm
    tied = bool(lm.config.tie_word_embeddings)
    blocks = lm.model.layers
    targets = plan(model).targets
    calib = list(calib or []) if method.needs_data else []
    fp = fingerprint((folder / "config.json").read_text(), shards.fingerprint(),
                     json.dumps(config.to_dict(), sort_keys=True), tensors=calib)
    work = Work(out.with_name(out.name + ".work"), fp)
    done = work.begin()
    masks = [row_mask(b) for b in calib]
    job = _Job(model, shards, tied, targets, config, method, masks)
    calls = job.embed(calib, quantize=done is None)
    if done is None:
        work.save_part("embed", *job.part("lm.model.embed_tokens"))
        job.drop("lm.model.embed_tokens")
        done = 0
        work.commit(0, [_hidden(c) for c in calls])
    elif calls:
        calls = [advance(c, h) for c, h in zip(calls, work.hidden(done))]
    for i in range(done, len(blocks)):
        t0 = time.perf_counter()
        calls = job.block(i, calls)
        work.save_part(f"block-{i:05d}", *job.part(f"lm.model.layers.{i}"))
        job.drop(f"lm.model.layers.{i}")
        give_back()
        work.commit(i + 1, [_hidden(c) for c in calls])
        if on_block is not None:
            on_block(i, len(blocks), time.perf_counter() - t0)
    job.head(calls)
    norm, head = job.part("lm.model.norm"), job.part("lm.lm_head")
    work.save_part("head", {**norm[0], **head[0]}, {**norm[1], **head[1]})
    parts = ["embed", *(f"block-{i:05d}" for i in range(len(blocks))), "head"]
    _write(out, [work.part(p) for p in parts], hf_folder.source_of(folder), config.to_dict())
    work.remove()
    return out


class _Job:
    """The skeleton being filled and quantised part by part."""

    def __init__(self, model, shards, tied, targets, config, method, masks) -> None:
        self.model, self.shards, self.tied, self.targets = model, shards, tied, targets
        self.config, self.method, self.masks = config, method, masks
        self.metas: dict[str, nn.Module] = {}

    def _fill(self, name: str) -> nn.Module:
        """A filled copy of the meta submodule ``name`` (``lm.`` + its checkpoint prefix), put in its place."""
        meta = self.model.get_submodule(name)
        real = hf_folder.fill(copy.deepcopy(meta), name[len("lm."):] + ".", self.shards, self.tied)
        replace(self.model, name, real)
        self.metas[name] = meta
        return meta

    def drop(self, name: str) -> None:
        """Put the meta submodule back at ``name``: its weights (float or packed) are freed."""
        replace(self.model, name, self.metas.pop(name))

    def _mine(self, prefix: str) -> dict[str, type]:
        return {n: h for n, h in self.targets.items() if n == prefix or n.startswith(prefix + ".")}

    def _swap_rest(self, names) -> None:
        for n in names:
            replace(self.model, n, swap(self.model.get_submodule(n), self.config, self.targets[n], n))

    @torch.no_grad()
    def embed(self, calib: list, quantize: bool) -> list:
        """Block 0's calls for the calibration batches; the embedding quantised (when ``quantize``) in place."""
        lm = self.model.lm
        calls = []
        if calib or quantize:
            meta = self._fill("lm.model.embed_tokens")
            if calib:
                calls = capture_inputs(self.model, lm.model.layers[0], calib)
            mine = self._mine("lm.model.embed_tokens")
            if quantize:
                check_finite(self.model, list(mine))
                self._swap_rest(mine)  # embeddings take no calibrated method (as in memory)
            else:
                replace(self.model, "lm.model.embed_tokens", meta)
        return calls

    @torch.no_grad()
    def block(self, i: int, calls: list) -> list:
        """Quantise block ``i`` (filled from the shards) and return the next block's calls."""
        name = f"lm.model.layers.{i}"
        self._fill(name)
        block = self.model.get_submodule(name)
        mine = self._mine(name)
        check_finite(self.model, list(mine))
        if self.method.needs_data:
            data = [n for n in mine if _data_ready(self.model.get_submodule(n))]
            make, apply, settle = calibrated_apply(self.model, self.targets, self.config, self.method)
            try:  # the next block's inputs on the reference path too, as in memory (settled after the model)
                groups(block, data, calls, self.masks, make, _trimmed(apply), name + ".", True)
                self._swap_rest(n for n in mine if n not in data)
                block = self.model.get_submodule(name)
                return [advance(c, first_output(block(*c[0], **c[1]))) for c in calls]
            finally:
                settle()
        self._swap_rest(mine)
        return calls

    @torch.no_grad()
    def head(self, calls: list) -> None:
        """Quantise the final norm and the LM head on the last block's outputs."""
        self._fill("lm.model.norm")
        self._fill("lm.lm_head")
        mine = {**self._mine("lm.model.norm"), **self._mine("lm.lm_head")}
        check_finite(self.model, list(mine))
        idle = list(mine)
        if self.method.needs_data:
            lm = self.model.lm
            data = [n for n in mine if _data_ready(self.model.get_submodule(n))]
            make, apply, settle = calibrated_apply(self.model, self.targets, self.config, self.method)
            whole = [((_hidden(c),), {}) for c in calls]
            try:
                idle = groups(_Head(lm.model.norm, lm.lm_head), data, whole, self.masks, make, _trimmed(apply), "lm.",
                              True)
            finally:
                settle()
            idle += [n for n in mine if n not in data]
        self._swap_rest(idle)

    def part(self, name: str) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors and quantised-layer metadata of submodule ``name``, named as in the whole model."""
        module = self.model.get_submodule(name)
        tensors = module.state_dict(prefix=name + ".")
        layers = {f"{name}.{n}" if n else name: {"handler": type(m).__name__, **m.qmeta}
                  for n, m in module.named_modules() if isinstance(m, QuantModule)}
        return tensors, layers


def _trimmed(apply: Callable[[list], None]) -> Callable[[list], None]:
    """``apply`` with the heap's free pages given back before and after each group (its floats are freed then)."""

    def run(group: list) -> None:
        give_back()
        apply(group)
        give_back()

    return run


def _write(out: Path, parts: list[Path], source: str, config: dict) -> None:
    """The artifact from the parts' files, one tensor in memory at a time (read, not mapped: a mapped part
    stays resident until closed, and the parts together are the whole artifact)."""
    layers: dict = {}
    entries = []
    for path in parts:
        f = TensorFile(path)
        layers.update(json.loads(f.metadata["layers"]))
        for k in f.names():
            dtype, shape = f.dtype_shape(k)
            entries.append(Entry(k, dtype, shape, lambda f=f, k=k: f.read(k)))
    meta = {"format_version": FORMAT_VERSION, "source": source, "config": config, "layers": layers}
    write_streamed(out, entries, {"bitladder": json.dumps(meta, sort_keys=True)})
