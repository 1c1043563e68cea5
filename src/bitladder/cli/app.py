"""The ``bitladder`` command: ladder, inspect. User errors print one line and exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bitladder.cli import bench, info, stream
from bitladder.cli.options import DATA_HELP, TASK_HELP
from bitladder.errors import BitladderError
from bitladder.pipeline.measure.allocator import steady_allocator

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a PyTorch model down the precision ladder and measure every rung.")
console = Console() if sys.stdout.isatty() else Console(width=170)


def plain(text: str) -> None:
    """Print text holding user paths and names as it is: ``[`` in a path is not rich markup."""
    console.print(text, markup=False, highlight=False)
ABORTS = (typer.Abort, KeyboardInterrupt)  # Ctrl-C: exit 130 without a traceback
info.register(app, console)
bench.register(app, console)
stream.register(app, console)


@app.command()
def ladder(
    model: str = typer.Option("digits", help="digits, minilm, or a factory 'package.module:function'"),
    rungs: str = typer.Option("", help="comma-separated rungs, e.g. fp16,int8,int4-g64 (default: the model's)"),
    out: Path = typer.Option(Path("runs/ladder"), help="folder for artifacts, results.json and report.html"),
    repeats: int = typer.Option(10, min=1, help="timed runs per rung (median; interleaved with fp32)"),
    data: Path = typer.Option(None, help=DATA_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
    pipeline: int = typer.Option(0, "--pipeline", help="also evaluate each rung in N pipeline stages, one per "
                                 "process: launch with torchrun --nproc-per-node N --no-python bitladder ladder ..."),
    microbatches: int = typer.Option(4, help="with --pipeline: micro-batches per batch"),
    timeout: float = typer.Option(300.0, help="with --pipeline: seconds any wait may take (the other stages "
                                              "wait for rank 0's quantisation of each rung)"),
) -> None:
    """Quantise to each rung, save, reload, and measure fidelity, size and speed."""
    from bitladder.pipeline.ladder.rungs import parse_rungs
    from bitladder.pipeline.ladder.run import out_dir, run_ladder
    from bitladder.pipeline.report.html import write_report
    from bitladder.zoo.registry import resolve, with_task

    configs = parse_rungs(r for r in rungs.split(",") if r.strip())  # a bad rung fails before the model loads
    model = with_task(model, task)  # so does a task the checkpoint cannot serve
    with out_dir(out), console.status(f"loading {model}"):
        spec = resolve(model, data)
    configs = configs or parse_rungs(spec.default_rungs)
    from bitladder.cli.table import ladder_table, warning_lines
    from bitladder.pipeline.parallel.evaluate import Pipeline

    pipe = Pipeline(pipeline, microbatches, timeout) if pipeline else None

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        step = bar.add_task(f"{spec.name} ladder", total=len(configs))

        def on_rung(rung: str, row: dict | None) -> None:
            if row is None:
                bar.update(step, description=f"{spec.name}: {rung}")
            else:
                bar.advance(step)

        results = run_ladder(spec, configs, out, repeats=repeats, on_rung=on_rung, pipeline=pipe,
                             allocator=steady_allocator())
    if results is None:  # a pipeline stage other than the first: rank 0 reports
        return
    report = write_report(results, out / "report.html")
    console.print(ladder_table(results))
    for line in warning_lines(results["rungs"]):
        console.print(line)
    if pipe is not None:
        from bitladder.pipeline.parallel.run import pipeline_line

        for row in results["rungs"]:
            plain(f"{row['rung']}: {pipeline_line(row['pipeline'])}")
    plain(f"wall time {results['wall_s']:.1f} s; results: {out / 'results.json'}; report: {report}")


@app.command()
def compress(
    recipe: Path = typer.Argument(..., help="a YAML recipe (see examples/)"),
    out: Path = typer.Option(None, help="folder for the artifact, results.json and report.html (default: the "
                                        "recipe's 'out', else runs/NAME)"),
    distributed: str = typer.Option(None, help="training steps under torchrun: ddp (replicated) or fsdp (sharded "
                                               "parameters and optimiser state); default: the recipe's, else ddp"),
    data: Path = typer.Option(None, help=DATA_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
    pipeline: int = typer.Option(0, "--pipeline", help="also evaluate the result in N pipeline stages, one per "
                                 "process: launch with torchrun --nproc-per-node N --no-python bitladder compress ..."),
    microbatches: int = typer.Option(4, help="with --pipeline: micro-batches per batch"),
    timeout: float = typer.Option(300.0, help="with --pipeline: seconds any send, receive or barrier may wait"),
) -> None:
    """Run a recipe: prune, quantise, train low-bit layers, distil, export and evaluate, in one go."""
    from bitladder.pipeline.recipe.compress import run_recipe
    from bitladder.pipeline.ladder.run import out_dir
    from bitladder.pipeline.recipe.parse import load_recipe
    from bitladder.pipeline.report.html import write_report
    from bitladder.zoo.registry import resolve, with_task

    parsed = load_recipe(recipe)
    if distributed is not None:
        if distributed not in ("ddp", "fsdp"):  # the recipe's training modes
            raise BitladderError(f"--distributed must be ddp or fsdp, got {distributed!r}")
        parsed.distribute(distributed)
    if pipeline:
        parsed.pipelined(pipeline, microbatches, timeout)
    out = out or Path(parsed.out or f"runs/{parsed.name}")
    model = with_task(parsed.model, task)
    with out_dir(out), console.status(f"loading {parsed.model}"):
        spec = resolve(model, data)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        step = bar.add_task(parsed.name, total=len(parsed.steps))

        def on_step(kind: str, rec: dict | None) -> None:
            if rec is None:
                bar.update(step, description=f"{parsed.name}: {kind}")
            else:
                bar.advance(step)
                plain(f"  {kind:9s} {rec['seconds']:7.1f} s  fidelity {rec['fidelity']:.4f}  "
                              f"params {rec['params']:,}  nonzero {rec['nonzero']:,}")

        res = run_recipe(parsed, spec, out, on_step=on_step, allocator=steady_allocator())
    if res is None:  # a pipeline stage other than the first: rank 0 reports
        return
    report = write_report(res, out / "report.html")
    from bitladder.cli.table import ladder_table, warning_lines

    console.print(ladder_table(res))
    for line in warning_lines(res["rungs"]):
        console.print(line)
    row = res["rungs"][0]
    if row.get("pipeline"):
        from bitladder.pipeline.parallel.run import pipeline_line

        plain(pipeline_line(row["pipeline"]))
    plain(f"{row['bytes_on_disk']:,} bytes ({row['fp32_bytes'] / row['bytes_on_disk']:.1f}x smaller than "
                  f"fp32); params {row['params']:,} of {row['fp32_params']:,}; MACs {row['macs']:,} of "
                  f"{row['fp32_macs']:,}; wall {res['wall_s']:.1f} s; report: {report}")


@app.command()
def tune(
    model: str = typer.Option("digits", help="digits, minilm, or a factory 'package.module:function'"),
    max_drop: float = typer.Option(1.0, help="fidelity drop budget in points (accuracy %, or cosine x 100)"),
    objective: str = typer.Option("size", help="size (bits per weight) or latency"),
    trials: int = typer.Option(60, help="complete trials the study should hold (a resumed study counts its own)"),
    workers: int = typer.Option(1, help="local worker processes on the same study"),
    storage: str = typer.Option(None, help="study database URL (default: sqlite file OUT/study.db; PostgreSQL "
                                           "URLs let workers on many machines share one study)"),
    study: str = typer.Option(None, help="study name (default: MODEL-OBJECTIVE-dropMAX)"),
    timeout: float = typer.Option(None, help="stop each worker after this many seconds"),
    out: Path = typer.Option(Path("runs/tune"), help="folder for study.db, the best artifact, results.json, report"),
    data: Path = typer.Option(None, help=DATA_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
) -> None:
    """Search formats per layer, sparsity and rank for the smallest (or fastest) model within a drop budget."""
    from bitladder.pipeline.report.html import write_report
    from bitladder.pipeline.tune.study import TuneConfig
    from bitladder.pipeline.tune.run import run_tune
    from bitladder.zoo.registry import with_task

    model = with_task(model, task)
    config = TuneConfig(max_drop=max_drop, objective=objective, trials=trials)
    with console.status(f"tuning {model}: {trials} trials, {workers} worker(s)"):
        try:
            res = run_tune(model, config, out, storage=storage, study_name=study, workers=workers, timeout=timeout,
                           data=None if data is None else str(data), allocator=steady_allocator())
        finally:
            import json

            if (out / "results.json").exists():
                part = json.loads((out / "results.json").read_text())
                if part.get("trials") and part.get("metric"):
                    write_report(part, out / "report.html")
    from bitladder.cli.table import warning_lines

    row = res["rungs"][0]
    for line in warning_lines(res["rungs"]):
        console.print(line)
    plain(f"best: trial #{res['best']['number']} of {len(res['trials'])}: {row['bits_per_weight']:.2f} bits "
                  f"per weight, {row['fidelity']:.4f} ({row['fidelity_drop_pt']:.2f} pt drop; held-out half "
                  f"{row['heldout_fidelity_drop_pt']:.2f} pt), {row['bytes_on_disk']:,} bytes, speed x "
                  f"{row['latency_ratio']:.2f}; wall {res['wall_s']:.0f} s; report: {out / 'report.html'}")


@app.command()
def mixed(
    model: str = typer.Option("digits", help="digits, minilm, or a factory 'package.module:function'"),
    rungs: str = typer.Option("int8,int4-g32,int2-g32-asym", help="candidate rungs per layer"),
    budget: float = typer.Option(3.0, help="average bits per weight (scales counted) to meet"),
    out: Path = typer.Option(Path("runs/mixed"), help="folder for the artifact, mixed.json, heatmap"),
    data: Path = typer.Option(None, help=DATA_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
) -> None:
    """Per-layer sensitivity, then a per-layer format meeting a bits-per-weight budget."""
    from bitladder.pipeline.ladder.run import out_dir
    from bitladder.pipeline.ladder.mixed import run_mixed
    from bitladder.pipeline.ladder.rungs import parse_rungs
    from bitladder.zoo.registry import resolve, with_task

    configs = parse_rungs(r for r in rungs.split(",") if r.strip())  # a bad rung fails before the model loads
    if not 0 < budget <= 64:
        raise BitladderError(f"budget must be in (0, 64] bits per weight, got {budget}")
    model = with_task(model, task)
    with out_dir(out), console.status(f"loading {model}"):
        spec = resolve(model, data)
    with console.status("measuring per-layer sensitivity"):
        res = run_mixed(spec, configs, budget, out)
    from collections import Counter

    counts = ", ".join(f"{n} x {r}" for r, n in Counter(res["assignment"].values()).items())
    plain(f"{spec.name}: {res['bits_per_weight']:.3f} bits per weight ({counts}); fidelity "
                  f"{res['fidelity']:.4f}, drop {res['fidelity_drop_pt']:.2f} pt; {res['bytes_on_disk']:,} bytes; "
                  f"report: {out / 'mixed.html'}")
    from bitladder.cli.table import warning_lines

    for line in warning_lines([res]):
        console.print(line)


@app.command()
def export(
    artifact: Path = typer.Argument(..., help="a .safetensors artifact written by bitladder"),
    out: Path = typer.Option(..., "--out", help="the file (onnx, gguf, executorch) or new folder (hf) to write"),
    to: str = typer.Option("onnx", "--to", help="onnx (onnxruntime, OpenVINO), gguf (llama.cpp), hf (a Hugging "
                           "Face compressed-tensors folder) or executorch (.pte for XNNPACK)"),
    model: str = typer.Option(None, help="the model's factory 'package.module:function' (artifacts of a "
                                         "built-in model or a Hugging Face folder need none)"),
    opset: int = typer.Option(None, help="onnx: the opset (default 21, needed for 4-bit weights)"),
    activations: str = typer.Option(None, help="onnx: float (weight-only, default), dynamic (int8 MatMulInteger, "
                                    "a scale per token) or dynamic-tensor (one scale per call); layers with "
                                    "calibrated (static) activations keep their grid whatever this says"),
    static_gemm: str = typer.Option(None, "--static-gemm", help="onnx: how layers with static int8 activations "
                                    "are written: integer (MatMulInteger, default; onnxruntime) or qdq "
                                    "(QuantizeLinear/DequantizeLinear around a float MatMul; OpenVINO, TensorRT)"),
    weights: str = typer.Option(None, help="onnx: standard (DequantizeLinear, default) or matmulnbits "
                                "(onnxruntime's MatMulNBits for Linear layers of 4 bits or fewer)"),
    remove_padding: bool = typer.Option(False, "--remove-padding", help="onnx: a BERT-style encoder runs its "
                                        "token-wise layers on each batch's real tokens only (same outputs)"),
) -> None:
    """Export an artifact to a deployment format, carrying bitladder's own quantised weights."""
    from bitladder.io.artifact import load, read_header
    from bitladder.io.targets import check, export as write
    from bitladder.zoo.registry import resolve

    tgt = check(to, out, opset=opset, activations=activations, weights=weights, static_gemm=static_gemm,
                remove_padding=remove_padding or None)
    meta, _ = read_header(artifact)
    if not (model or meta.get("source")):
        raise BitladderError(f"{artifact} does not say which model it is; pass its factory: --model package.module:function")
    spec = resolve(model or meta["source"])
    loaded = load(artifact, model=spec.fresh_model())
    batch = spec.latency_batch
    example = {k: v[:2] for k, v in batch.items()} if isinstance(batch, dict) else batch[:2]
    path = write(tgt.name, loaded, example, out, opset=opset, activations=activations, weights=weights,
                 static_gemm=static_gemm, remove_padding=remove_padding or None)
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    plain(f"wrote {path} ({size:,} bytes, {tgt.name})")


@app.command(name="run")
def run_artifact(
    artifact: Path = typer.Argument(..., help="a .safetensors artifact written by bitladder"),
    model: str = typer.Option(None, help="the model's factory 'package.module:function' (artifacts of a "
                                         "built-in model need none)"),
    pipeline: int = typer.Option(0, "--pipeline", help="split the model into N stages by stored bytes, one per "
                                 "process: launch with torchrun --nproc-per-node N --no-python bitladder run ..."),
    microbatches: int = typer.Option(4, help="with --pipeline: micro-batches per batch"),
    timeout: float = typer.Option(300.0, help="with --pipeline: seconds any send, receive or barrier may wait"),
    data: Path = typer.Option(None, help=DATA_HELP),
) -> None:
    """Load an artifact in this fresh process and run it on sample inputs of its model."""
    from bitladder.io.artifact import load, read_header
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo.registry import BUILTINS, resolve

    if artifact.suffix == ".onnx":
        raise BitladderError("run takes a .safetensors artifact; run .onnx files with onnxruntime directly")
    if pipeline:
        from bitladder.pipeline.parallel.evaluate import Pipeline
        from bitladder.pipeline.parallel.run import run_pipelined

        if data is not None:
            raise BitladderError("--data with --pipeline: not supported yet; the pipeline evaluates the model's own text")
        if (line := run_pipelined(artifact, model, Pipeline(pipeline, microbatches, timeout))) is not None:
            plain(line)  # the last stage's rank holds the outputs and prints
        return
    meta, _ = read_header(artifact)
    source = model or meta.get("source")
    if source not in BUILTINS and not str(source).startswith("hf:") and model is None:  # HF folders rebuild
        raise BitladderError(f"{artifact} is not of a built-in model; pass its factory: --model package.module:function")
    spec = resolve(source, data)
    loaded = load(artifact, model=spec.fresh_model())
    ref = outputs(spec.model, spec.eval_batches)
    fid = fidelity(spec, outputs(loaded, spec.eval_batches), ref)
    extra = "" if fid["cos_min"] is None else f", cos min {fid['cos_min']:.4f}, kNN@10 {fid['knn10']:.3f}"
    n = sum(len(next(iter(b.values()))) if isinstance(b, dict) else len(b) for b in spec.eval_batches)
    plain(f"{artifact}: {source} ran on {n} inputs; {spec.metric} {fid['fidelity']:.4f}{extra}")


def main(argv: list[str] | None = None) -> None:
    """The console entry point: user errors print one line and exit 2, ``--debug`` shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if debug := "--debug" in argv:
        argv.remove("--debug")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        code = app(argv, standalone_mode=False)
    except BitladderError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as e:  # usage errors carry their own message and exit code (2)
        if debug or not hasattr(e, "show"):
            raise
        e.show()
        sys.exit(getattr(e, "exit_code", 2))
    except ABORTS:
        sys.exit(130)
    if isinstance(code, int) and code:  # in this mode typer returns an exit's code (Ctrl-C: 130), never exits
        sys.exit(code)


if __name__ == "__main__":
    main()
