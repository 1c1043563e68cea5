"""Text for text models: the built-in corpus, or a user's file (``--data FILE``), split without overlap.

A file is plain text (one sample a line) or JSONL (``.jsonl``: one object a line with a string ``text``).
Blank lines are skipped and repeated samples kept once; the rest are ordered by a hash of their content
and cut in two: the first half evaluates, the second calibrates (and trains, for distillation), so no
sample is in both and the split does not depend on the file's order.

>>> t = from_lines([f"sample {i}" for i in range(10)] + ["sample 3"], "x.txt")
>>> len(t.eval), len(t.calib), bool(set(t.eval) & set(t.calib))
(5, 5, False)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bitladder.errors import BitladderError

MIN_SAMPLES = 4
ACCEPTED = "plain text (one sample a line) or JSONL (.jsonl, one {\"text\": ...} object a line), UTF-8"


@dataclass(frozen=True)
class Text:
    """Evaluation and calibration / training samples (disjoint), and where they came from."""
    eval: list[str]
    calib: list[str]
    source: str


def corpus_text(eval_n: int, calib_n: int) -> Text:
    """The built-in corpus: ``eval_n`` evaluation and ``calib_n`` calibration sentences."""
    from bitladder.zoo import corpus

    return Text(corpus.eval_sentences(eval_n), corpus.calibration_sentences(calib_n), "corpus")


def _key(s: str) -> str:
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def from_lines(samples: list[str], source: str) -> Text:
    """The disjoint split of ``samples`` (see the module docstring)."""
    unique = sorted(dict.fromkeys(s for s in samples if s.strip()), key=_key)
    if len(unique) < MIN_SAMPLES:
        raise BitladderError(f"{source}: {len(unique)} distinct samples; at least {MIN_SAMPLES} are needed "
                             f"(half evaluate, half calibrate)")
    half = (len(unique) + 1) // 2
    return Text(unique[:half], unique[half:], source)


def _jsonl(path: Path, lines: list[str]) -> list[str]:
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BitladderError(f"{path}:{i}: not JSON ({e.msg}); accepted: {ACCEPTED}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise BitladderError(f"{path}:{i}: needs a string field \"text\"; accepted: {ACCEPTED}")
        if "label" in obj:
            raise BitladderError(f"{path}:{i}: has a \"label\"; the text models here (sentence encoders, causal "
                                 f"LMs) are measured against fp32 and use no labels: drop the field")
        out.append(obj["text"])
    return out


def read(path: str | os.PathLike) -> Text:
    """The samples of a user's file, split; one-line errors for a missing, binary or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise BitladderError(f"data file {path} does not exist; accepted: {ACCEPTED}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BitladderError(f"{path} is not UTF-8 text; accepted: {ACCEPTED}") from None
    samples = _jsonl(path, lines) if path.suffix == ".jsonl" else [s.strip() for s in lines]
    return from_lines(samples, str(path))
