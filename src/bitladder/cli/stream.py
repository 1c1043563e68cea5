"""``bitladder stream``: quantise a Hugging Face causal-LM folder block by block (models bigger than memory).

A command of its own rather than a ``--stream`` flag: it takes one folder and writes one artifact, with no
ladder, evaluation or report, and its options are only those streaming honours.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def rung_of(method: str, bits: int, group: int) -> str:
    """The rung name of the options (HQQ fits zero points: asymmetric grids)."""
    from bitladder.errors import BitladderError
    from bitladder.methods.quantize.methods import RUNG_METHODS

    if method not in RUNG_METHODS:
        raise BitladderError(f"unknown method {method!r}; accepted: {', '.join(RUNG_METHODS)}")
    if group < 0:
        raise BitladderError(f"group must be 0 (one scale per channel) or a positive group size, got {group}")
    return f"int{bits}{f'-g{group}' if group else ''}{'-asym' if method == 'hqq' else ''}-{method}"


def register(app: typer.Typer, console: Console) -> None:
    """Add ``stream`` to the command."""

    @app.command()
    def stream(
        model: Path = typer.Option(..., help="a Hugging Face causal-LM folder: config.json + safetensors shards"),
        method: str = typer.Option("gptq", help="gptq, rtn, awq, hqq (or another rung method suffix)"),
        bits: int = typer.Option(4, help="integer weight bits (2 to 8)"),
        group: int = typer.Option(64, help="weights per scale along the input (0: one scale per channel)"),
        calib: int = typer.Option(32, help="calibration rows (128 tokens each) of the built-in corpus"),
        out: Path = typer.Option(..., help="the .safetensors artifact to write (OUT.work holds resumable state)"),
    ) -> None:
        """Quantise a model folder one decoder block at a time; a killed run resumes from its last block."""
        from bitladder.pipeline.ladder.rungs import parse_rung
        from bitladder.pipeline.stream.run import check_config, stream_quantize
        from bitladder.zoo import hf_folder

        rung = rung_of(method, bits, group)
        config = parse_rung(rung)
        folder = hf_folder.folder_of(str(model))
        hf_folder.read_config(folder)  # an unsupported architecture fails before the corpus is tokenised
        batches = hf_folder.calibration(folder, calib) if config.method.needs_data else None
        check_config(config, batches)
        t0 = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"{folder.name} {rung}", total=None)

            def on_block(i: int, n: int, seconds: float) -> None:
                bar.update(task, total=n, completed=i + 1, description=f"{folder.name} {rung}: block {i + 1}/{n}")
                console.print(f"  block {i + 1}/{n}  {seconds:6.1f} s", markup=False, highlight=False)

            path = stream_quantize(folder, config, batches, out, on_block=on_block)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        console.print(f"wrote {path} ({path.stat().st_size:,} bytes, {rung}); wall {time.perf_counter() - t0:.1f} s, "
                      f"peak RSS {rss:.0f} MB", markup=False, highlight=False)
