"""The layer rule of CONTRIBUTING.md, checked on the source: nothing imports upward, no two files import each
other (directly or in a longer cycle), and behaviour is not chosen by comparing class names."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "bitladder"
ORDER = ["errors", "atomic", "formats", "tensor", "kernels", "nn", "methods", "io", "zoo", "pipeline", "cli"]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(("bitladder", *f.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = f
    return out


def _imports(path: pathlib.Path, mods: dict) -> list[tuple[str, int]]:
    """Every bitladder module a file imports, at any depth (lazy imports inside functions count);
    ``from package import module`` counts as importing that module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bitladder"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
            found += [(t, node.lineno) for t in subs or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("bitladder")]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_nothing_imports_upward():
    bad, mods = [], _modules()
    for name, path in mods.items():
        src = _layer(name)
        for target, line in _imports(path, mods):
            dst = _layer(target)
            if src and dst and ORDER.index(dst) > ORDER.index(src):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle_between_files():
    mods = _modules()
    graph = {n: {t for t, _ in _imports(p, mods) if t in mods and t != n} for n, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_dispatch_on_class_names():
    pattern = re.compile(r"type\([^)]*\)\.__name__\s*(==|!=|in\b)")
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, "class-name dispatch (use isinstance or a registry):\n" + "\n".join(bad)


def test_every_public_function_class_and_method_has_a_docstring():
    """Inherited docstrings count: an override documented on its base needs no copy."""
    import importlib
    import inspect
    import pkgutil

    import bitladder

    missing = []
    for info in pkgutil.walk_packages(bitladder.__path__, "bitladder."):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, raw in vars(obj).items():
                    member = raw if isinstance(raw, property) else getattr(obj, attr)
                    fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(fn) and not inspect.getdoc(member):
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    assert not missing, "no docstring: " + ", ".join(missing)
