"""``bench --only``: which variants of a model suite to time.

Variant names contain ", " ("..., SmoothQuant 0.8; FFN down 0.5 + 32 outlier channels (QDQ) on OpenVINO, snippets
off"), so only a comma not followed by a space separates two terms: ``--only "W7A8 static, Smooth,torch.ao"`` is
the two terms "W7A8 static, Smooth" and "torch.ao".
"""

from __future__ import annotations

import re

from bitladder.errors import BitladderError


def split_only(text: str) -> list[str] | None:
    """The substrings of ``--only`` (None where it is empty: every variant)."""
    terms = [t.strip() for t in re.split(r",(?!\s)", text or "")]
    return [t for t in terms if t] or None


def pick(every: list[str], only: list[str] | None, keep: tuple[str, ...], suite: str) -> list[str]:
    """``keep`` (the baselines), then the variants of ``every`` that contain one of ``only`` (all of them where
    ``only`` is None); a term that no variant contains is an error, raised before anything is timed."""
    if only:
        missing = [o for o in only if not any(o in n for n in every)]
        if missing:
            raise BitladderError(f"--only {', '.join(map(repr, missing))} matches no {suite} variant; a term is a "
                                 f"substring of a variant's name, terms are separated by a comma without a space "
                                 f"(run without --only to see every name)")
    return [*keep, *(n for n in every if n not in keep and (not only or any(o in n for o in only)))]
