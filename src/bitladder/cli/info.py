"""``bitladder list`` and ``bitladder inspect``: what this build offers, read from the registries, and what an
artifact holds. Nothing here is a hand-kept list: a registered format, method, transform, kernel or recipe
step shows up by itself."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

WHAT = ("formats", "methods", "transforms", "kernels", "steps", "models")


def _formats(t: Table) -> None:
    from bitladder.formats.qtypes import QTYPES
    from bitladder.pipeline.ladder.rungs import BASES

    t.add_column("format"), t.add_column("kind"), t.add_column("bits"), t.add_column("rung config")
    for name, q in QTYPES.items():
        t.add_row(name, q.kind, f"{q.bits:g}", BASES[name].__name__ if name in BASES else "(-asym of the signed name)")


def _methods(t: Table) -> None:
    from bitladder.methods.quantize.dispatch import CALIBRATED
    from bitladder.methods.quantize.methods import RUNG_METHODS

    t.add_column("rung suffix"), t.add_column("config"), t.add_column("needs data")
    for name, make in RUNG_METHODS.items():
        m = make()
        t.add_row(f"-{name}", repr(m), "yes" if type(m) in CALIBRATED or m.needs_data else "no")


def _transforms(t: Table) -> None:
    from bitladder.methods.quantize.transforms import registered

    t.add_column("transform"), t.add_column("order"), t.add_column("what")
    for name, cls in sorted(registered().items(), key=lambda kv: kv[1].order):
        t.add_row(name, str(cls.order), (cls.__doc__ or "").strip().splitlines()[0])


def _kernels(t: Table) -> None:
    from bitladder.kernels import registry
    from bitladder.kernels.cpu import current

    cpu = current()
    t.add_column("kernel"), t.add_column("op"), t.add_column("needs"), t.add_column("here")
    for op in ("linear", "conv2d"):
        for k in registry.for_op(op):
            t.add_row(k.name, op, " ".join(getattr(k, "requires", ())) or "-", "yes" if k.available(cpu) else "no")


def _steps(t: Table) -> None:
    from bitladder.pipeline.recipe.steps import STEPS

    t.add_column("recipe step"), t.add_column("what")
    for name, body in STEPS.items():
        t.add_row(name, (body.__doc__ or "").strip().splitlines()[0])


def _models(t: Table) -> None:
    from bitladder.zoo.registry import ACCEPTED, BUILTINS

    t.add_column("model"), t.add_column("accepted")
    for name in BUILTINS:
        t.add_row(name, ACCEPTED)


def register(app: typer.Typer, console: Console) -> None:
    """Add ``list`` and ``inspect`` to the command."""

    @app.command("list")
    def list_(what: str = typer.Argument("formats", help=f"one of {', '.join(WHAT)}")) -> None:
        """What this build offers: formats (rung bases), methods, transforms, kernels, recipe steps, models."""
        from bitladder.errors import BitladderError

        if what not in WHAT:
            raise BitladderError(f"unknown list {what!r}; accepted: {', '.join(WHAT)}")
        t = Table(title=what)
        globals()[f"_{what}"](t)
        console.print(t)

    @app.command()
    def inspect(artifact: Path = typer.Argument(..., help="a .safetensors artifact written by bitladder")) -> None:
        """Per-layer format, shape and bytes of an artifact (reads the header only)."""
        from bitladder.cli.table import inspect_table
        from bitladder.io.artifact import read_header

        meta, info = read_header(artifact)
        console.print(inspect_table(artifact, meta, info))
