"""The work folder of a streamed quantisation (``OUT.work`` beside the output): what a killed run resumes from.

It holds one safetensors file per finished part (the embedding, each block, the head: packed tensors, plus the
part's layer metadata), the calibration hidden states entering the next block, and ``state.json`` (the run's
fingerprint and how many blocks are done). Every file is written to a temporary name and renamed, and
``state.json`` is renamed last, so a kill at any moment leaves the last finished block resumable. A work
folder with another fingerprint (other config, calibration or model) is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError

STATE = "state.json"


def fingerprint(*parts: str, tensors: list[torch.Tensor] = ()) -> str:
    """sha256 over ``parts`` and every tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() + b"\0")
    for t in tensors:
        t = t.detach().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Work:
    """The work folder at ``path`` for the run identified by ``fp``."""

    def __init__(self, path: Path, fp: str) -> None:
        self.path, self.fp = Path(path), fp

    def begin(self) -> int | None:
        """The number of finished blocks of an earlier run of the same job (None: start afresh)."""
        state = self.path / STATE
        if not state.is_file():
            self.path.mkdir(exist_ok=True)
            return None
        try:
            rec = json.loads(state.read_text())
            done, fp = int(rec["done"]), rec["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise BitladderError(f"{state} is damaged; delete {self.path} to start again") from None
        if fp != self.fp:
            raise BitladderError(f"{self.path} holds an unfinished run of another model, config or calibration; "
                                 "resume it with the same inputs, or delete the folder to start again")
        return done

    def save_part(self, name: str, tensors: dict[str, torch.Tensor], layers: dict) -> None:
        """A finished part: its tensors and the metadata of its quantised layers."""
        with atomic_path(self.path / f"{name}.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"layers": json.dumps(layers, sort_keys=True)})

    def commit(self, done: int, hidden: list[torch.Tensor]) -> None:
        """Record ``done`` finished blocks and the hidden states entering block ``done``."""
        with atomic_path(self.path / f"hidden-{done:05d}.safetensors") as tmp:
            save_file({f"{i:06d}": h.contiguous() for i, h in enumerate(hidden)}, str(tmp))
        with atomic_path(self.path / STATE) as tmp:
            tmp.write_text(json.dumps({"fingerprint": self.fp, "done": done}))
        for old in self.path.glob("hidden-*.safetensors"):
            if old.name != f"hidden-{done:05d}.safetensors":
                old.unlink()

    def hidden(self, done: int) -> list[torch.Tensor]:
        """The hidden states entering block ``done``, as committed."""
        path = self.path / f"hidden-{done:05d}.safetensors"
        if not path.is_file():
            raise BitladderError(f"{self.path} is damaged ({path.name} missing); delete it to start again")
        with safe_open(str(path), framework="pt") as f:
            return [f.get_tensor(k) for k in sorted(f.keys())]

    def part(self, name: str) -> Path:
        """The file of a finished part; BitladderError when it is missing."""
        path = self.path / f"{name}.safetensors"
        if not path.is_file():
            raise BitladderError(f"{self.path} is damaged ({path.name} missing); delete it to start again")
        return path

    def remove(self) -> None:
        """Delete the folder (the run is finished)."""
        shutil.rmtree(self.path, ignore_errors=True)
