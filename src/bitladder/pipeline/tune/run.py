"""Running a tune study: local worker processes on one storage, resume, and the final measurement."""

from __future__ import annotations

import contextlib
import dataclasses

import multiprocessing as mp
import re
import time
from pathlib import Path

import torch

from bitladder.errors import BitladderError
from bitladder.io.artifact import load, save
from bitladder.pipeline.tune import study as T
from bitladder.pipeline.measure.allocator import allocated, steady_allocator
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.ladder.run import SCHEMA, check_out_dir, write_json
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo.registry import build_for_load
from bitladder.io.filenames import safe_stem
from bitladder.pipeline.measure.warn import Facts, float_bytes, sample_count, warnings_for


def _storage(url: str):
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from bitladder.pipeline.tune.storage import HeartbeatStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs = dict(heartbeat_interval=5, grace_period=20,
                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                  engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    for attempt in range(5):
        try:  # heartbeats: a killed worker's running trials become FAIL and are retried once
            with _creation_lock(url):
                return HeartbeatStorage(url, **kwargs)
        except Exception as e:
            # processes opening a new database all create its schema; a loser finds it made: open it again
            if _lost_creation_race(e) and attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise BitladderError(f"cannot open study storage {redact(url)}: {type(e).__name__}: "
                                 f"{str(e)[:200]}") from None


def _lost_creation_race(e: Exception) -> bool:
    return any(m in str(e) for m in ("already exists", "UNIQUE constraint", "duplicate key"))


@contextlib.contextmanager
def _creation_lock(url: str):
    """An exclusive lock beside a SQLite file while its schema is made (optuna's create/migrate is not atomic)."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the retry in _storage covers the race
        fcntl = None
    if path is None or fcntl is None or not Path(path).parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def open_study(storage: str, name: str, config: T.TuneConfig):
    """Create or load the Optuna study; BitladderError if it was made with other settings."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=10, multivariate=True)
    study = optuna.create_study(study_name=name, storage=_storage(storage), direction="minimize",
                                sampler=sampler, load_if_exists=True)
    known = study.user_attrs.get("config")
    mine = {"max_drop": config.max_drop, "objective": config.objective, "formats": list(config.formats)}
    if known is None:
        study.set_user_attr("config", mine)
    elif known != mine:
        raise BitladderError(f"study {name!r} in {redact(storage)} was made with {known}; this run asks {mine}: "
                             "use another --study name")
    return study


def _done(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _retries(study) -> int:
    """Retries of killed trials still waiting to run (a stale trial's copy made by the heartbeat callback)."""
    from optuna.trial import TrialState

    return sum("failed_trial" in t.system_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


class _Stop:
    """Stop once the study holds ``trials`` complete trials and no retry of a killed trial is waiting (optuna's
    MaxTrialsCallback stopped a resumed study with a retry still queued)."""

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def __call__(self, study, trial) -> None:
        if _done(study) >= self.trials and not _retries(study):
            study.stop()


def run_worker(model: str, storage: str, name: str, config: T.TuneConfig, threads: int, timeout: float | None,
               seed_offset: int = 0, ready=None, data: str | None = None, pin: bool = False) -> None:
    """One worker: optimise until the study holds ``config.trials`` complete trials (or ``timeout``).

    ``ready`` (a barrier shared by local workers) holds each one after its set-up until all are set up,
    so the queued first trials are shared out instead of going to whichever process started first.
    ``pin``: a worker process of its own pins glibc's malloc thresholds, as the command did for itself.
    """
    import threading

    import optuna

    from bitladder.zoo.registry import resolve

    if pin:
        steady_allocator()
    torch.set_num_threads(threads)
    spec = resolve(model, data)
    search, _ = T.split_eval(spec)
    names = T.layers_of(spec.model)
    numel = T._weight_numel(spec.model, names)
    ref = outputs(spec.model, search.eval_batches)
    base = fidelity(search, ref, ref)["fidelity"]
    cfg = dataclasses.replace(config, seed=config.seed + seed_offset)
    study = open_study(storage, name, cfg)
    study.set_user_attr("metric", spec.metric)
    study.set_user_attr("fp32_fidelity", base)

    def objective(trial) -> float:
        params = T.suggest(trial, cfg, names)
        same = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.params == params and "fidelity" in t.user_attrs), None)
        if same is not None:  # TPE proposes repeats; reuse the measurement instead of recomputing it
            row = {k: same.user_attrs[k] for k in T.ROW_KEYS}
        else:
            row = T.score(search, T.build(search, params, names, cfg.configs), ref, base, names, numel, cfg.repeats)
        for k, v in row.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("violation", row["fidelity_drop_pt"] - cfg.max_drop)
        trial.set_constraint("fidelity_drop", row["fidelity_drop_pt"] - cfg.max_drop)  # TPE: feasible when <= 0
        trial.set_user_attr("worker", T.worker_label())
        return T.objective_value(row, cfg)

    if ready is not None:
        try:
            ready.wait(timeout=600)
        except threading.BrokenBarrierError:  # a peer failed during its set-up: go on alone
            pass
    stop = _Stop(config.trials)
    end = None if timeout is None else time.monotonic() + timeout
    while (left := max(config.trials - _done(study), _retries(study))) > 0 and (end is None or time.monotonic() < end):
        try:
            study.optimize(objective, n_trials=left, timeout=None if end is None else end - time.monotonic(),
                           callbacks=[stop], catch=(BitladderError,))
        except ValueError as e:
            # two workers popped the same queued trial from SQLite and the other one told it first:
            # the trial is done (by the other), so this worker just carries on
            if "Cannot tell a COMPLETE trial" not in str(e):
                raise
            continue
        break


def run_tune(model: str, config: T.TuneConfig, out: Path, storage: str | None = None, study_name: str | None = None,
             workers: int = 1, timeout: float | None = None, data: str | None = None,
             allocator: dict | None = None) -> dict:
    """Run the search for ``model`` (on ``data``, a text file, where given) in ``workers`` processes and
    summarise it into ``out``; returns the results. ``allocator``: what the command pinned in this process
    (:func:`~bitladder.pipeline.measure.allocator.steady_allocator`); worker processes then pin theirs too."""
    check_out_dir(out)
    machine()  # a bad BITLADDER_CPU fails before the study starts
    if workers < 1:
        raise BitladderError(f"workers must be >= 1, got {workers}")
    from bitladder.zoo.registry import resolve

    spec = resolve(model, data)
    config = T.for_model(config, spec)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study_name or f"{model}-{config.objective}-drop{config.max_drop:g}"
    study = open_study(storage, name, config)  # fail fast on a bad URL or a mismatched study
    if not study.trials:
        names = T.layers_of(spec.model)
        guided, table = T.guided_start(spec, config, names)
        for params in T.warm_start(config, names) + guided:
            study.enqueue_trial(params, skip_if_exists=True)
        if table:
            study.set_user_attr("sensitivity", table)
    t0 = time.perf_counter()
    threads = max(1, torch.get_num_threads() // workers)
    if workers == 1:
        run_worker(model, storage, name, config, threads, timeout, data=data)
    else:
        ctx = mp.get_context("spawn")
        ready = ctx.Barrier(workers)
        procs = [ctx.Process(target=run_worker, args=(model, storage, name, config, threads, timeout, i, ready, data,
                                                          bool(allocator)))
                 for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if all(p.exitcode != 0 for p in procs):
            raise BitladderError(f"all {workers} tune workers failed (exit codes {[p.exitcode for p in procs]})")
    return summarize(model, config, storage, name, out, time.perf_counter() - t0, data, allocator)


def trial_rows(study) -> list[dict]:
    """One dict per trial: number, state, params, the measured values and whether it is feasible."""
    keys = ("fidelity", "fidelity_drop_pt", "bits_per_weight", "model_bytes", "latency_ms", "latency_ratio", "worker")
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "params": dict(t.params),
               **{k: t.user_attrs.get(k) for k in keys}}
        row["feasible"] = t.state.name == "COMPLETE" and t.user_attrs.get("violation", 1) <= 0
        rows.append(row)
    return rows


def _measure_best(model: str, params: dict, out: Path, name: str, data: str | None = None) -> dict:
    from bitladder.zoo.registry import resolve

    spec = resolve(model, data)
    search, held = T.split_eval(spec)
    names = T.layers_of(spec.model)
    numel = T._weight_numel(spec.model, names)
    built = T.build(spec, params, names)
    from bitladder.io.structure import describe
    from bitladder.pipeline.measure.evaluate import paired_latency

    floats = T.reshape(spec, params, names)
    path = save(built, out / f"{safe_stem(name)}.safetensors", source=spec.source,
                config={"type": "Tuned", "params": params}, structure=describe(floats, spec.fresh_model()))
    back = load(path, builder=build_for_load) if spec.source else load(path, model=spec.fresh_model())
    row: dict = {"rung": name, "config": {"type": "Tuned", "params": params}, "artifact": path.name,
                 "bytes_on_disk": path.stat().st_size}
    for label, s in (("", spec), ("search_", search), ("heldout_", held)):
        ref = outputs(spec.model, s.eval_batches)
        base = fidelity(s, ref, ref)["fidelity"]
        fid = fidelity(s, outputs(back, s.eval_batches), ref)
        row[f"{label}fidelity"] = fid["fidelity"]
        row[f"{label}fidelity_drop_pt"] = 100 * (base - fid["fidelity"])
        if not label:
            row.update({"cos_min": fid["cos_min"], "knn10": fid["knn10"], "fp32_fidelity": base})
    bits, nbytes = T.compressed_bits(back, names, numel)
    fp32_s, got_s = paired_latency(spec.model, back, spec.latency_batch, 10)
    row.update({"bits_per_weight": bits, "quantized_bytes": nbytes, "theoretical_bytes": None,
                "latency_ratio": fp32_s / got_s, "latency_ms": 1e3 * got_s, "fp32_latency_ms": 1e3 * fp32_s,
                "kernels": {n: m.kernel for n, m in back.named_modules() if hasattr(m, "kernel")},
                "metric": spec.metric})
    row["warnings"] = warnings_for(Facts(latency_ratio=row["latency_ratio"], bytes_on_disk=row["bytes_on_disk"],
                                         fp32_bytes=float_bytes(spec.model), kernels=row["kernels"],
                                         samples=sample_count(spec.eval_batches)))
    from bitladder.pipeline.measure.robustness import robustness
    from bitladder.pipeline.ladder.summary import summarize as layer_summary

    extras = {"summary": layer_summary(spec.model, back), "robustness": robustness(spec, back, [0.1, 0.25, 0.5])}
    return row, extras


def summarize(model: str, config: T.TuneConfig, storage: str, name: str, out: Path, wall: float,
              data: str | None = None, allocator: dict | None = None) -> dict:
    """Rebuild and measure the best feasible trial, write ``results.json``; BitladderError (after it) if none."""
    import optuna

    study = optuna.load_study(study_name=name, storage=_storage(storage))
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    feasible = [r for r in done if r["feasible"]]
    key = "bits_per_weight" if config.objective == "size" else "latency_ms"
    results = {"schema": SCHEMA, "model": model, "data": None if data is None else str(data),
               "metric": study.user_attrs.get("metric"),
               "fp32_fidelity": study.user_attrs.get("fp32_fidelity"),
               "torch_threads": torch.get_num_threads(), "machine": machine(),
               "allocator": allocated(allocator), "wall_s": wall,
               "objective": config.objective,
               "max_drop_pt": config.max_drop, "study": {"name": name, "storage": redact(storage)},
               "trials": rows, "rungs": [], "workers": sorted({r["worker"] for r in done if r["worker"]})}
    if feasible:
        best = min(feasible, key=lambda r: r[key])
        row, extras = _measure_best(model, best["params"], out, f"{model}-tuned-{best['number']}", data)
        results.update(extras)
        results.update({"metric": row.pop("metric"), "fp32_fidelity": row.pop("fp32_fidelity"), "rungs": [row]})
        results["search_fp32_fidelity"] = study.user_attrs.get("fp32_fidelity")
        results["best"] = {"number": best["number"], "params": best["params"], "summary":
                           f"{row['bits_per_weight']:.2f} bits per weight, drop {row['fidelity_drop_pt']:.2f} pt "
                           f"(held-out half {row['heldout_fidelity_drop_pt']:.2f} pt)"}
    if study.user_attrs.get("sensitivity"):
        results["sensitivity"] = study.user_attrs["sensitivity"]
    write_json(out / "results.json", results)
    if not feasible:
        if not done:
            raise BitladderError(f"study {name!r} has no completed trial")
        closest = min(done, key=lambda r: (r["fidelity_drop_pt"], r[key]))
        raise BitladderError(f"no configuration met max drop {config.max_drop:g} pt in {len(done)} trials; best found: "
                             f"trial #{closest['number']}, drop {closest['fidelity_drop_pt']:.2f} pt at "
                             f"{closest['bits_per_weight']:.2f} bits per weight (results in {out / 'results.json'})")
    return results
