"""``bitladder bench``: kernels, whole-model suites and any model, timed against fp32 and the peers in one run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from bitladder.cli.options import DATA_HELP, TASK_HELP
from bitladder.errors import BitladderError
from bitladder.pipeline.bench.only import split_only

#: bench suites: name -> (rows function, status line, whole model: takes repeats and the --only filter)
BENCH_SUITES = {
    "linear": ("bitladder.pipeline.bench.linear:linear_rows", "timing Linear kernels", False),
    "conv": ("bitladder.pipeline.bench.conv:conv_rows", "timing Conv2d kernels", False),
    "minilm": ("bitladder.pipeline.bench.minilm:minilm_rows", "timing MiniLM variants", True),
    "tinylm": ("bitladder.pipeline.bench.tinylm:tinylm_rows", "timing tinylm variants", True),
}


def register(app: typer.Typer, console: Console) -> None:
    """Add ``bench`` to the command."""

    def plain(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    @app.command()
    def bench(
        suite: str = typer.Option("linear", help="linear, conv, minilm, tinylm or all (with --model: that model)"),
        json_out: Path = typer.Option(None, "--json", help="write the rows (schema bitladder.bench/1) here"),
        repeats: int = typer.Option(10, min=1, help="MiniLM, tinylm, --model: timed runs per variant"),
        only: str = typer.Option("", help="MiniLM, tinylm: substrings of the variants to run, separated by a comma "
                                          "without a space (names contain ', ')"),
        model: str = typer.Option(None, help="bench this model instead of a suite: a built-in, a factory "
                                             "'package.module:function' or a Hugging Face folder, fp32 beside --rungs"),
        rungs: str = typer.Option("", help="with --model: comma-separated rungs (default: the model's)"),
        data: Path = typer.Option(None, help=DATA_HELP),
        task: str = typer.Option(None, help=TASK_HELP),
    ) -> None:
        """Latency (and fidelity) of every kernel and rung against fp32 and the peers, one run."""
        from bitladder.pipeline.ladder.run import write_json
        from bitladder.pipeline.bench.limits import annotate, measure
        from bitladder.pipeline.measure.machine import command, machine, one_line

        if model is None and (rungs or data is not None or task is not None):
            raise BitladderError("--rungs, --data and --task go with --model (the suites bench their own variants)")
        if model is not None:
            from bitladder.pipeline.ladder.rungs import parse_rungs
            from bitladder.zoo.registry import with_task

            parse_rungs(r for r in rungs.split(",") if r.strip())  # a bad rung fails before anything is timed
            model = with_task(model, task)
            suite = "model"
        elif suite not in (*BENCH_SUITES, "all"):
            raise BitladderError(f"unknown suite {suite!r}; accepted: {', '.join(BENCH_SUITES)}, all")
        if json_out is not None:
            if not json_out.parent.is_dir():  # fail before the timing, not after it
                raise BitladderError(f"cannot write {json_out}: folder {json_out.parent} does not exist")
        machine()  # a bad BITLADDER_CPU fails here, before any timing
        from bitladder.pipeline.measure.allocator import allocated, steady_allocator

        pinned = steady_allocator()  # the in-process suites (linear, conv); model workers fix their own (isolated.py)
        with console.status("measuring read bandwidth and GEMM peaks"):
            limits = measure()
        mach = machine(**limits)
        rows: list[dict] = []
        picked = ["--model", model, *(["--rungs", rungs] if rungs else []), *(["--data", str(data)] if data else [])] \
            if model is not None else ["--suite", suite]
        cmd = ["bitladder", "bench", *picked, *(["--repeats", str(repeats)] if suite not in ("linear", "conv")
                                                else []), *(["--only", only] if only else []), "--json", str(json_out)]

        def save(complete: bool) -> None:
            """The rows so far, rewritten whole after each one: a bench stopped part way keeps what it measured."""
            if json_out is not None:
                write_json(json_out, {"schema": "bitladder.bench/1", "command": command("bitladder bench", cmd[2:]),
                                      "torch_threads": __import__("torch").get_num_threads(), "machine": mach,
                                      "allocator": allocated(pinned), "complete": complete,
                                      "rows": annotate(rows, limits)})

        import importlib

        if model is not None:
            from bitladder.pipeline.bench.model import model_rows

            with console.status(f"timing {model}: fp32 and its rungs, one process each"):
                rows += model_rows(model, [r.strip() for r in rungs.split(",") if r.strip()], repeats,
                                   None if data is None else str(data))
                save(False)
        for name, (where, status, whole_model) in BENCH_SUITES.items():
            if suite not in (name, "all"):
                continue
            module, fn = where.split(":")
            rows_of = getattr(importlib.import_module(module), fn)
            with console.status(status):
                for row in rows_of(repeats, split_only(only)) if whole_model else rows_of():
                    rows.append(row)
                    save(False)
        from bitladder.cli.table import bench_table

        annotate(rows, limits)
        console.print(bench_table(rows))
        int8 = f"{limits['int8_gops']:.0f}" if limits["int8_gops"] else "–"
        plain(f"machine: {one_line(mach)}; read {limits['read_gbps']:.1f} GB/s, fp32 "
                      f"{limits['fp32_gflops']:.0f} GFLOP/s, int8 {int8} GOP/s (limit = that fraction of these)")
        if json_out is not None:
            save(True)
            plain(f"rows: {json_out}")
