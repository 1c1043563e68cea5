"""Fuzzing the command line: damaged artifacts (random bytes, truncations, bit-flips, edited headers and
metadata) into ``inspect``, ``run`` and ``export``, random recipes into ``compress``. Every input ends in
one ``error:`` line and exit 2, or (still valid) in its real output; never a traceback, never a leftover
file. 1,000 inputs in all (issue 22: 800 artifacts, 200 recipes), about a minute; in process, since a
subprocess each would take many minutes."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitladder.cli.app import main

# reproducible (derandomize), no deadline (a still-valid input runs the model), fixtures shared by examples
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large, HealthCheck.large_base_example])

# values chosen to break parsers: wrong types, huge and negative numbers, names that almost fit
EDGE_INTS = st.sampled_from([-(2**63), -1, 0, 1, 3, 2**31, 2**63, 10**30])
WORDS = st.sampled_from(["int4", "int8", "binary", "ternary", "fp8_e4m3", "nf4", "group", "channel", "tensor",
                         "QuantLinear", "QuantConv2d", "Linear", "Conv2d", "FactorizedConv2d", "auto", "rtn",
                         "float16", "digits", "U8", "F16", "F32", "I64", "features.0", "", "..", "/"])
SCALARS = (st.none() | st.booleans() | st.integers() | EDGE_INTS | st.floats() | WORDS
           | st.text(alphabet=st.characters(exclude_characters=":"), max_size=8))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6) | WORDS, c,
                                                                                   max_size=4), max_leaves=8)


@pytest.fixture(scope="module", autouse=True)
def _click_command_built_once():
    """Typer builds the click command again at every call, two thirds of a refused input's time: build it once."""
    import typer.main

    from bitladder.cli.app import app

    real = typer.main.get_command
    built = real(app)
    typer.main.get_command = lambda t: built if t is app else real(t)
    yield
    typer.main.get_command = real


class _Boom:
    """Pickled, it calls ``exec`` on load: a loader that unpickles exits with this message instead of 2."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle executed')",))


def _pickles() -> list[bytes]:
    import pickle

    import torch

    buf = io.BytesIO()
    torch.save({"w": _Boom()}, buf)  # the zip container torch.save writes
    return [pickle.dumps(_Boom(), protocol=p) for p in (2, 4, 5)] + [buf.getvalue()]


PICKLES = _pickles()


def cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``bitladder ARGS`` run in this process; other exceptions propagate."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def check(res: tuple[int, str, str], produced: bool) -> None:
    """Exit 2 with one ``error:`` line, or exit 0 with its output really there."""
    code, out, err = res
    assert "Traceback" not in out + err, err
    if code == 0:
        assert produced, f"exit 0 without output: {out[-300:]}"
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err, out[-300:])


# ---- artifacts --------------------------------------------------------------------------------------------

class Seeds(list):
    """The starting artifacts, named in a failure report instead of printed (they are 100 kB)."""

    def __repr__(self) -> str:
        return f"<{len(self)} digits artifacts: int8, int4-g32, factorised int8>"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, digits_spec) -> list[bytes]:
    """Real artifacts of the digits CNN: int8, int4 with groups, and a factorised one (structure records)."""
    import bitladder
    from bitladder.io.structure import describe
    from bitladder.methods.lowrank.conv import ConvFactor, factorize_convs
    from bitladder.pipeline.ladder.rungs import parse_rung

    d = tmp_path_factory.mktemp("artifacts")
    out = Seeds()
    for rung in ("int8", "int4-g32"):
        q = bitladder.quantize(digits_spec.model, parse_rung(rung))
        out.append(bitladder.save(q, d / f"{rung}.safetensors", source="digits", config={"rung": rung}).read_bytes())
    f = factorize_convs(digits_spec.model, ConvFactor(kind="separable"), include=["features.2"])
    q = bitladder.quantize(f, parse_rung("int8"))
    out.append(bitladder.save(q, d / "f.safetensors", source="digits",
                              structure=describe(f, digits_spec.fresh_model())).read_bytes())
    return out


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def edit_json(draw, tree):
    """``tree`` with one random edit: a value replaced, a key removed or added (paths drawn from the tree)."""
    paths = [()]
    stack = [((), tree)]
    while stack:
        p, node = stack.pop()
        kids = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in kids:
            paths.append((*p, k))
            stack.append(((*p, k), v))
    path = draw(st.sampled_from(paths))
    tree = json.loads(json.dumps(tree))
    if not path:
        return draw(JSON)
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=6) | WORDS)] = draw(JSON)
    else:
        parent[path[-1]] = draw(JSON)
    return tree


@st.composite
def damaged(draw, artifacts):
    """One damaged artifact: random bytes, a truncation, bit-flips, or an edited header or metadata."""
    data = draw(st.sampled_from(artifacts))
    n = struct.unpack("<Q", data[:8])[0]
    kind = draw(st.sampled_from(["bytes", "pickle", "truncate", "flip", "flip-header", "header", "meta", "meta",
                                 "meta"]))
    if kind == "pickle":  # whole, cut, or behind a safetensors-looking prefix
        p = draw(st.sampled_from(PICKLES))
        return draw(st.sampled_from([b"", data[:9]])) + p[:draw(st.integers(1, len(p)))]
    if kind == "bytes":
        prefix = draw(st.sampled_from([b"", data[:9], b"\x80\x04", b"PK\x03\x04"]))
        return prefix + draw(st.binary(max_size=200))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind in ("flip", "flip-header"):
        buf = bytearray(data)
        hi = 8 + n if kind == "flip-header" else len(data)
        for at in draw(st.lists(st.integers(0, hi - 1), min_size=1, max_size=4)):
            buf[at] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    header, body = split(data)
    if kind == "header":
        return join(draw(edit_json(header)), body)
    meta = json.loads(header["__metadata__"]["bitladder"])
    header["__metadata__"]["bitladder"] = json.dumps(draw(edit_json(meta)))
    return join(header, body)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fuzz_artifact(data: bytes, command: str, workdir: Path) -> None:
    """``inspect`` (reads the header), then ``run`` or ``export`` (both load the artifact; a still-valid one
    then runs, a quarter second: one of the two keeps the test short)."""
    d = Path(tempfile.mkdtemp(dir=workdir))
    art = d / "a.safetensors"
    art.write_bytes(data)
    res = cli("inspect", str(art))
    check(res, produced="(quantised layers)" in res[1])
    onnx = d / "a.onnx"
    if command == "run":
        res = cli("run", str(art))
        check(res, produced="ran on" in res[1])
    else:
        res = cli("export", str(art), "--out", str(onnx))
        check(res, produced=onnx.is_file() and onnx.stat().st_size > 0)
    left = sorted(p.name for p in d.iterdir())
    assert left == (["a.onnx", "a.safetensors"] if command == "export" and res[0] == 0 else ["a.safetensors"]), left


def test_the_undamaged_artifacts_pass(artifacts, workdir):
    """The fuzz's starting points are accepted, so a refusal below is of the damage, not of the artifact."""
    for data in artifacts:
        d = Path(tempfile.mkdtemp(dir=workdir))
        (d / "a.safetensors").write_bytes(data)
        assert [cli(*cmd)[0] for cmd in (["inspect", str(d / "a.safetensors")], ["run", str(d / "a.safetensors")],
                                         ["export", str(d / "a.safetensors"), "--out", str(d / "a.onnx")])] == [0] * 3


@settings(max_examples=800, **FUZZ)
@given(data=st.data())
def test_damaged_artifacts_give_one_line(data, artifacts, workdir):
    fuzz_artifact(data.draw(damaged(artifacts)), data.draw(st.sampled_from(["run", "export"])), workdir)


# ---- recipes ----------------------------------------------------------------------------------------------

# few of its edits stay valid: each of those runs the whole recipe (seconds)
VALID = {"model": "digits", "name": "fuzz", "steps": [{"quantize": {"rung": "int8"}}, {"export": {"onnx": True}}]}
STEP_NAMES = st.sampled_from(["prune", "lowrank", "quantize", "lowbit", "finetune", "distill", "export",
                              "evaluate", "train"])


@st.composite
def recipe_bytes(draw) -> bytes:
    """Recipe files: random bytes, random YAML structures, edits of a valid recipe, or its text cut or spliced."""
    kind = draw(st.sampled_from(["bytes", "random", "edit", "edit", "step", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    return draw(recipe_text(kind)).encode()


@st.composite
def recipe_text(draw, kind: str) -> str:
    if kind == "random":
        return yaml.safe_dump(draw(JSON))
    if kind == "edit":
        return yaml.safe_dump(draw(edit_json(VALID)))
    if kind == "step":  # a known step with a random body (not empty: that trains with the defaults, for seconds)
        tree = json.loads(json.dumps(VALID))
        tree["steps"][0] = {draw(STEP_NAMES): draw(JSON.filter(bool))}
        return yaml.safe_dump(tree)
    text = yaml.safe_dump(VALID)
    at = draw(st.integers(0, len(text)))
    tail = text[at:] if draw(st.booleans()) else ""  # spliced in, or the text cut there
    return text[:at] + draw(st.sampled_from(["\t", "{", "]", "- ", ": ", "&a", "*a", "!!python/object:os.system",
                                             "\x00", "\u2028", "%YAML 9"])) + tail


def fuzz_recipe(data: bytes, workdir: Path) -> None:
    """``compress`` on one recipe file: one line and nothing written, or the recipe's results."""
    d = Path(tempfile.mkdtemp(dir=workdir))
    recipe = d / "r.yaml"
    recipe.write_bytes(data)
    out = d / "out"
    res = cli("compress", str(recipe), "--out", str(out))
    made = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    check(res, produced="results.json" in made)
    if res[0] != 0:
        assert made == [], made
    assert sorted(p.name for p in d.iterdir()) == (["out", "r.yaml"] if out.exists() else ["r.yaml"])


@settings(max_examples=200, **FUZZ)
@given(data=recipe_bytes())
def test_random_recipes_give_one_line(data, workdir):
    fuzz_recipe(data, workdir)
