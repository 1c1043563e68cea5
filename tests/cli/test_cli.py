"""The command line: real subprocesses, one-line errors, exit codes, nothing half-written."""

import os
import subprocess
import sys

import pytest

BIN = [sys.executable, "-m", "bitladder.cli.app"]


def cli(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([*BIN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def one_line_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0]
    assert "Traceback" not in res.stderr


def test_ladder_and_inspect(tmp_path):
    out = tmp_path / "run"
    res = cli("ladder", "--model", "digits", "--rungs", "fp32,int4-g32,binary", "--out", str(out), "--repeats", "2")
    assert res.returncode == 0, res.stderr
    assert "int4-g32" in res.stdout and "binary" in res.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["digits-binary.safetensors", "digits-fp32.safetensors", "digits-int4-g32.safetensors",
                     "report.html", "results.json"]
    if sys.platform.startswith("linux"):  # the command times under pinned malloc thresholds and says so
        import json

        alloc = json.loads((out / "results.json").read_text())["allocator"]
        assert alloc["allocator"] in ("glibc", "default") and (alloc["allocator"] == "default"
                                                               or alloc["mmap_threshold"] >= 32 << 20)
    res = cli("inspect", str(out / "digits-int4-g32.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "classifier.1" in res.stdout and "int4" in res.stdout and "group 32" in res.stdout


def test_unknown_rung(tmp_path):
    one_line_error(cli("ladder", "--rungs", "int4,int9", "--out", str(tmp_path / "o")), "int9", "accepted")
    assert not (tmp_path / "o").exists()


def test_unknown_model(tmp_path):
    one_line_error(cli("ladder", "--model", "resnet", "--out", str(tmp_path)), "resnet", "digits, minilm")
    one_line_error(cli("ladder", "--model", "nosuchmod:fn", "--out", str(tmp_path)), "cannot load factory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir_nonroot(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    one_line_error(cli("ladder", "--out", str(ro / "x")), "cannot write")


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(cli("ladder", "--out", str(f)), "cannot write to output folder")
    assert f.read_text() == "x"


def test_inspect_bad_files(tmp_path):
    p = tmp_path / "w.pt"
    import torch

    torch.save({"a": torch.zeros(2)}, p)
    one_line_error(cli("inspect", str(p)), "pickle")
    t = tmp_path / "t.safetensors"
    t.write_bytes(b"\x10\x00")
    one_line_error(cli("inspect", str(t)), "truncated")
    one_line_error(cli("inspect", str(tmp_path / "none.safetensors")), "does not exist")


def test_debug_shows_traceback(tmp_path):
    res = cli("--debug", "inspect", str(tmp_path / "none.safetensors"))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_usage_errors_exit_nonzero():
    res = cli("ladder", "--repeats", "0")
    assert res.returncode == 2


def test_mixed_precision_command(tmp_path):
    out = tmp_path / "mixed"
    res = cli("mixed", "--model", "digits", "--budget", "3.0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    import json

    data = json.loads((out / "mixed.json").read_text())
    assert data["bits_per_weight"] <= 3.0 and data["fidelity_drop_pt"] <= 2.0 and data["machine"]["flags"]
    assert (out / "sensitivity.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "mixed.html").read_text()
    one_line_error(cli("mixed", "--budget", "0.5", "--out", str(tmp_path / "m2")), "lowest reachable")


def test_export_and_run_a_fresh_process(tmp_path):
    out = tmp_path / "run"
    assert cli("ladder", "--rungs", "int4-g32", "--out", str(out), "--repeats", "1").returncode == 0
    art = out / "digits-int4-g32.safetensors"
    res = cli("run", str(art))
    assert res.returncode == 0 and "accuracy 0.9" in res.stdout, res.stderr
    res = cli("export", str(art), "--out", str(tmp_path / "d.onnx"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d.onnx").stat().st_size < 40_000
    one_line_error(cli("export", str(art), "--out", str(tmp_path / "e.onnx"), "--opset", "17"), "opset >= 21")
    assert not (tmp_path / "e.onnx").exists()
    one_line_error(cli("export", str(art), "--out", str(tmp_path / "e.onnx"), "--static-gemm", "int8"),
                   "static_gemm must be one of integer, qdq")
    assert not (tmp_path / "e.onnx").exists()
    one_line_error(cli("export", str(art), "--out", str(tmp_path / "e.onnx"), "--remove-padding"),
                   "removing padding needs a BERT-style encoder")
    assert not (tmp_path / "e.onnx").exists()


def test_compress_runs_the_digits_example(tmp_path):
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "digits.yaml"
    res = cli("compress", str(example), "--out", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    assert "bitladder recipe: digits" in res.stdout and "smaller than fp32" in res.stdout
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["digits-prune-int4-lowbit.onnx", "digits-prune-int4-lowbit.safetensors", "report.html",
                     "results.json"]


def test_compress_bad_recipe_is_one_line(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: digits\nsteps:\n  - quantize: {rung: int8}\n  - prune: {sparsity: 0.5}\n")
    one_line_error(cli("compress", str(bad), "--out", str(tmp_path / "o")), "line 4", "prune cannot follow quantize")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_compress_distributed_mode_is_ddp_or_fsdp(tmp_path):
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "digits.yaml"
    one_line_error(cli("compress", str(example), "--out", str(tmp_path / "o"), "--distributed", "zero"),
                   "--distributed must be ddp or fsdp, got 'zero'")
    assert not (tmp_path / "o").exists()


def test_tune_bad_input_is_one_line(tmp_path):
    one_line_error(cli("tune", "--objective", "fastest", "--out", str(tmp_path / "t")), "unknown objective", "size")
    one_line_error(cli("tune", "--storage", "nosuchdb://x", "--trials", "1", "--out", str(tmp_path / "t")),
                   "cannot open study storage")


def test_run_a_user_model_artifact_with_its_factory(tmp_path):
    out = tmp_path / "u"
    user = "tests.zoo.user_models:classifier"
    assert cli("ladder", "--model", user, "--rungs", "int4-g32", "--out", str(out), "--repeats", "1").returncode == 0
    art = next(out.glob("*.safetensors"))
    assert ":" not in art.name and art.name.startswith("tests.zoo.user_models-classifier")
    res = cli("run", str(art), "--model", user)
    flat = " ".join(res.stdout.split())  # rich wraps long paths
    assert res.returncode == 0 and "ran on 64 inputs; accuracy" in flat, res.stderr
    one_line_error(cli("run", str(art)), "not of a built-in model", "--model")
    one_line_error(cli("run", str(art), "--model", "tests.zoo.user_models:regressor"), "does not match the model")


def test_bench_json_carries_the_machine_and_limit_fractions(tmp_path, monkeypatch):
    """The wiring only (in process, timings stubbed): the suites and the limits are measured elsewhere."""
    import json

    from bitladder.cli.app import main
    from bitladder.pipeline.bench import limits
    from bitladder.pipeline.bench import linear as bench_linear
    from bitladder.pipeline.measure import allocator
    from bitladder.pipeline.measure.machine import LIBRARY_CAPS

    row = {"case": "linear", "shape": [1024, 1024], "batch": 1, "variant": "fp32 F.linear", "latency_ms": 0.5,
           "ratio_vs_fp32": 1.0, "weight_bytes": 4 << 20, "ops": 2 << 20}
    monkeypatch.setattr(bench_linear, "linear_rows", lambda: [dict(row)])
    monkeypatch.setattr(limits, "measure", lambda: {"read_gbps": 16.0, "fp32_gflops": 80.0, "int8_gops": 160.0})
    pinned = {"allocator": "glibc", "mmap_threshold": 1 << 30, "trim_threshold": 1 << 30}
    monkeypatch.setattr(allocator, "steady_allocator", lambda: dict(pinned))  # not this test process's own malloc
    for name in ("BITLADDER_CPU", *LIBRARY_CAPS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")  # a cap the run was under heads its command line
    main(["bench", "--suite", "linear", "--json", str(tmp_path / "b.json")])
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["allocator"] == pinned  # what the command pinned before timing, as the ladder records it
    assert data["schema"] == "bitladder.bench/1" and data["machine"]["read_gbps"] == 16.0
    assert data["command"] == f"FBGEMM_ENABLE_INSTRUCTIONS=AVX2 bitladder bench --suite linear --json {tmp_path}/b.json"
    assert {"cpu", "flags", "cores", "threads", "versions", "fp32_gflops", "int8_gops"} <= set(data["machine"])
    assert data["rows"][0]["limit_fraction"] == pytest.approx((4 << 20) / 0.5e-3 / 16e9, rel=1e-3)
    assert data["complete"] is True


def test_bench_stopped_part_way_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """A suite that dies after its first row (a timeout, a crash) leaves that row, marked incomplete."""
    import json

    from bitladder.cli.app import main
    from bitladder.pipeline.bench import limits
    from bitladder.pipeline.bench import linear as bench_linear

    def rows():
        yield {"case": "linear", "shape": [8, 8], "batch": 1, "variant": "fp32 F.linear", "latency_ms": 0.5,
               "ratio_vs_fp32": 1.0, "weight_bytes": 4 << 20}
        raise KeyboardInterrupt  # what a user's Ctrl-C raises mid-suite

    monkeypatch.setattr(bench_linear, "linear_rows", rows)
    monkeypatch.setattr(limits, "measure", lambda: {"read_gbps": 16.0, "fp32_gflops": 80.0, "int8_gops": 160.0})
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "--suite", "linear", "--json", str(tmp_path / "b.json")])
    assert stopped.value.code == 130
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["complete"] is False and [r["variant"] for r in data["rows"]] == ["fp32 F.linear"]
    assert data["rows"][0]["limit_fraction"] == pytest.approx((4 << 20) / 0.5e-3 / 16e9, rel=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # no temporary file left beside it


@pytest.mark.parametrize("command", [["ladder"], ["mixed"]])
def test_a_model_that_does_not_resolve_leaves_no_output_folder(tmp_path, capsys, command):
    from bitladder.cli.app import main

    (tmp_path / "kept").mkdir()  # a folder the user made is never removed
    for out in (tmp_path / "new" / "run", tmp_path / "kept"):
        with pytest.raises(SystemExit) as e:
            main([*command, "--model", "nosuch", "--out", str(out)])
        assert e.value.code == 2 and "unknown model 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and (tmp_path / "kept").is_dir()


def test_a_factory_that_raises_is_named_in_one_line(tmp_path):
    one_line_error(cli("ladder", "--model", "tests.zoo.user_models:raises", "--out", str(tmp_path / "o")),
                   "factory 'tests.zoo.user_models:raises' raised RuntimeError", "/data/missing")
