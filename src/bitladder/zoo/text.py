"""Text for text models: the built-in corpus, or a user's file (``--data FILE``), split without overlap.

A file is plain text (one sample a line) or JSONL (``.jsonl``: one object a line with a string ``text`` and,
for classifiers, a ``label`` on every line: an integer class or one of the model's label names).
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
ACCEPTED = ("plain text (one sample a line) or JSONL (.jsonl, one {\"text\": ..., optional \"label\": ...} object "
            "a line), UTF-8")


@dataclass(frozen=True)
class Text:
    """Evaluation and calibration / training samples (disjoint), and where they came from; with labels, one
    per sample (``eval_labels`` / ``calib_labels``: ints or label names)."""
    eval: list[str]
    calib: list[str]
    source: str
    eval_labels: list | None = None
    calib_labels: list | None = None

    def unlabelled(self, what: str) -> Text:
        """This text, refused if it has labels: ``what`` (e.g. "sentence encoders") uses none."""
        if self.eval_labels is not None:
            raise BitladderError(f"{self.source}: has \"label\" fields; {what} are measured against fp32 and use "
                                 f"no labels: drop the field (labels are for sequence classifiers)")
        return self


def corpus_text(eval_n: int, calib_n: int) -> Text:
    """The built-in corpus: ``eval_n`` evaluation and ``calib_n`` calibration sentences."""
    from bitladder.zoo import corpus

    return Text(corpus.eval_sentences(eval_n), corpus.calibration_sentences(calib_n), "corpus")


def _key(s: str) -> str:
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def from_lines(samples: list[str], source: str, labels: list | None = None) -> Text:
    """The disjoint split of ``samples`` (see the module docstring), each with its label where given."""
    first: dict[str, object] = {}
    for i, s in enumerate(samples):
        if not s.strip():
            continue
        lab = None if labels is None else labels[i]
        if s in first and first[s] != lab:
            raise BitladderError(f"{source}: the sample {s[:60]!r} appears with labels {first[s]!r} and {lab!r}")
        first.setdefault(s, lab)
    unique = sorted(first, key=_key)
    if len(unique) < MIN_SAMPLES:
        raise BitladderError(f"{source}: {len(unique)} distinct samples; at least {MIN_SAMPLES} are needed "
                             f"(half evaluate, half calibrate)")
    half = (len(unique) + 1) // 2
    if labels is None:
        return Text(unique[:half], unique[half:], source)
    return Text(unique[:half], unique[half:], source, [first[s] for s in unique[:half]],
                [first[s] for s in unique[half:]])


def _jsonl(path: Path, lines: list[str]) -> tuple[list[str], list | None]:
    out, labels = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BitladderError(f"{path}:{i}: not JSON ({e.msg}); accepted: {ACCEPTED}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise BitladderError(f"{path}:{i}: needs a string field \"text\"; accepted: {ACCEPTED}")
        lab = obj.get("label")
        if lab is not None and (isinstance(lab, bool) or not isinstance(lab, int | str)):
            raise BitladderError(f"{path}:{i}: \"label\" must be an integer class or a label name, got {lab!r}")
        if labels and (lab is None) != (labels[-1] is None):
            raise BitladderError(f"{path}:{i}: {'no' if lab is None else 'a'} \"label\", unlike the lines before; "
                                 f"give every line a label, or none")
        out.append(obj["text"])
        labels.append(lab)
    return out, (labels if labels and labels[0] is not None else None)


def read(path: str | os.PathLike) -> Text:
    """The samples of a user's file, split; one-line errors for a missing, binary or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise BitladderError(f"data file {path} does not exist; accepted: {ACCEPTED}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BitladderError(f"{path} is not UTF-8 text; accepted: {ACCEPTED}") from None
    samples, labels = _jsonl(path, lines) if path.suffix == ".jsonl" else ([s.strip() for s in lines], None)
    return from_lines(samples, str(path), labels)
