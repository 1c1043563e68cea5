"""Real English sentences from the docstrings of Python's standard library (it ships everywhere).

Deterministic for a given Python version: a fixed list of modules, their public members' docstrings,
the first sentence of each paragraph, cleaned and de-duplicated, then ordered by a content hash.
The evaluation and calibration slices are disjoint by construction.

>>> ev, cal = eval_sentences(64), calibration_sentences(32)
>>> len(ev), len(cal), bool(set(ev) & set(cal))
(64, 32, False)
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from functools import lru_cache

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
    return tuple(sorted(found, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def eval_sentences(n: int = 256) -> list[str]:
    """The first ``n`` sentences in hash order: the evaluation slice."""
    s = all_sentences()
    if n > len(s) // 2:
        raise ValueError(f"at most {len(s) // 2} evaluation sentences exist, asked for {n}")
    return list(s[:n])


def calibration_sentences(n: int = 128) -> list[str]:
    """Sentences from the second half of the hash order: disjoint from any evaluation slice."""
    s = all_sentences()
    half = len(s) // 2
    if n > len(s) - half:
        raise ValueError(f"at most {len(s) - half} calibration sentences exist, asked for {n}")
    return list(s[half : half + n])
