"""Real English sentences from the docstrings of Python's standard library (it ships everywhere).

Deterministic for a given Python version: a fixed list of modules, their public members' docstrings,
the first sentence of each paragraph, cleaned and de-duplicated, then ordered by a content hash.
The evaluation and calibration slices are disjoint by construction. :func:`training_sentences` is a
larger pool for distillation (which needs inputs only): every sentence of every docstring in the
standard library's source files, minus the half of :func:`all_sentences` that evaluation slices come from.

>>> ev, cal = eval_sentences(64), calibration_sentences(32)
>>> len(ev), len(cal), bool(set(ev) & set(cal))
(64, 32, False)
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html.parser", "http.client", "http.cookies", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "logging", "mailbox", "mimetypes", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "turtle",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_OK = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-/.]+[.!?]$")
_LOOSE = re.compile(r"^[A-Z][^>\n]*[.!?]$")  # training text: any punctuation, no doctest prompts


def _docstrings(mod) -> list[str]:
    docs = [mod.__doc__ or ""]
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", mod.__name__) != mod.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for mname, meth in sorted(vars(obj).items()):
                if not mname.startswith("_") and callable(meth):
                    docs.append(inspect.getdoc(meth) or "")
    return docs


@lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """Every candidate sentence of the listed modules' docstrings, in content-hash order (cached)."""
    found: set[str] = set()
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # a module missing from this Python (e.g. turtle without Tk) is skipped
            continue
        for doc in _docstrings(mod):
            for para in doc.split("\n\n"):
                first = _SENT.split(" ".join(para.split()), maxsplit=1)[0]
                words = len(first.split())
                if 6 <= words <= 40 and _OK.match(first):
                    found.add(first)
    return hash_order(found)


def eval_sentences(n: int = 256) -> list[str]:
    """The first ``n`` sentences in hash order: the evaluation slice."""
    s = all_sentences()
    if n > len(s) // 2:
        raise ValueError(f"at most {len(s) // 2} evaluation sentences exist, asked for {n}")
    return list(s[:n])


def calibration_sentences(n: int = 128, *, up_to: bool = False) -> list[str]:
    """Sentences from the second half of the hash order: disjoint from any evaluation slice. ``up_to``: all
    of that half when it holds fewer than ``n`` (its size follows the Python version's docstrings), else
    ValueError."""
    s = all_sentences()
    half = len(s) // 2
    if n > len(s) - half and not up_to:
        raise ValueError(f"at most {len(s) - half} calibration sentences exist, asked for {n}")
    return list(s[half : half + n])


def hash_order(sentences) -> tuple[str, ...]:
    """``sentences`` ordered by the sha256 of their text: a fixed order that no source order leaks into."""
    return tuple(sorted(sentences, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


@lru_cache(maxsize=1)
def _stdlib_docstring_sentences() -> tuple[str, ...]:
    """Every 6-40 word sentence of every module/class/function docstring in the standard library's
    ``.py`` files (parsed with :mod:`ast`, never imported; site-packages left out), in hash order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if {"site-packages", "__pycache__"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few test files are deliberately broken
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for para in (ast.get_docstring(node) or "").split("\n\n"):
                    for sent in _SENT.split(" ".join(para.split())):
                        if 6 <= len(sent.split()) <= 40 and _LOOSE.match(sent):
                            found.add(sent)
    return hash_order(found)


def training_sentences(n: int | None = None) -> list[str]:
    """Up to ``n`` (all when None) training sentences, in hash order: the standard library's docstring
    sentences that are not in the first half of :func:`all_sentences` (where every evaluation slice
    lies), so they never overlap :func:`eval_sentences`; the calibration half may recur among them.
    Deterministic for a given Python version (about 14,000 sentences on CPython 3.11)."""
    s = all_sentences()
    held_out = set(s[: len(s) // 2])
    pool = [x for x in _stdlib_docstring_sentences() if x not in held_out]
    assert not held_out & set(pool), "training sentences overlap the evaluation half"
    if n is not None and n > len(pool):
        raise ValueError(f"at most {len(pool)} training sentences exist, asked for {n}")
    return pool if n is None else pool[:n]
