"""Recipe schema: every error names the field and its line; impossible orders are refused."""

import pytest

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.parse import load_recipe, parse_recipe


def err(text: str) -> str:
    with pytest.raises(BitladderError) as e:
        parse_recipe(text, "r.yaml")
    return str(e.value)


def test_valid_recipe_keeps_order_lines_and_bodies():
    r = parse_recipe("model: digits\nname: t\nsteps:\n  - prune: {sparsity: 0.3}\n  - finetune: {epochs: 2}\n"
                     "  - quantize: {rung: int4-g32, exclude: ['classifier.3']}\n  - evaluate: {}\n")
    assert [s.kind for s in r.steps] == ["prune", "finetune", "quantize", "evaluate"]
    assert [s.line for s in r.steps] == [4, 5, 6, 7]
    assert r.steps[0].body.config().sparsity == 0.3 and r.steps[2].body.exclude == ["classifier.3"]
    assert r.to_dict()["steps"][1] == {"finetune": {"epochs": 2, "lr": 0.001, "optimizer": "adamw",
                                                    "schedule": "cosine", "seed": 0, "checkpoint": False}}


@pytest.mark.parametrize("text, needles", [
    ("model: digits\nsteps:\n  - squash: {}\n", ["line 3", "unknown step 'squash'", "known steps"]),
    ("model: digits\nsteps:\n  - prune:\n      sparsty: 0.5\n", ["line 4", "steps.0.prune.sparsty", "unknown field"]),
    ("model: digits\nsteps:\n  - prune:\n      sparsity: 1.5\n", ["line 4", "sparsity must be in [0, 1)"]),
    ("model: digits\nsteps:\n  - quantize: {rung: int9}\n", ["line 3", "unknown rung 'int9'"]),
    ("model: digits\nsteps:\n  - quantize: {}\n", ["steps.0.quantize.rung", "required"]),
    ("model: digits\nstepz: []\n", ["line 2", "stepz", "unknown field"]),
    ("model: digits\nsteps: []\n", ["at least one step"]),
    ("model: digits\nsteps:\n  - {prune: {}, quantize: {rung: int8}}\n", ["line 3", "one key"]),
    ("model: digits\nsteps:\n  - export: {onnx: true, weights: nbits}\n", ["steps.0.export.weights", "matmulnbits"]),
    ("model: [\n", ["not valid YAML"]),
    ("- a\n- b\n", ["a mapping"]),
])
def test_bad_fields_name_field_and_line(text, needles):
    msg = err(text)
    assert msg.startswith("r.yaml")
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize("steps, needles", [
    (["quantize: {rung: int8}", "prune: {}"], ["line 4", "prune cannot follow quantize", "float weights"]),
    (["lowbit: {bits: 2}", "quantize: {rung: int8}", "distill: {}"], ["quantize cannot follow lowbit"]),
    (["quantize: {rung: int8}", "quantize: {rung: int4}"], ["quantize cannot follow quantize"]),
    (["evaluate: {}", "finetune: {}"], ["finetune cannot follow evaluate"]),
    (["lowbit: {bits: ternary}", "evaluate: {}"], ["a finetune or distill step must follow"]),
    (["export: {}", "lowrank: {}"], ["lowrank cannot follow export"]),
])
def test_impossible_orders(steps, needles):
    msg = err("model: digits\nsteps:\n" + "".join(f"  - {s}\n" for s in steps))
    for n in needles:
        assert n in msg, msg


def test_load_recipe_missing_file(tmp_path):
    with pytest.raises(BitladderError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", ["examples/digits.yaml", "examples/minilm.yaml", "examples/tinylm-pipeline.yaml"])
def test_examples_are_valid(path):
    from pathlib import Path

    r = load_recipe(Path(__file__).parents[3] / path)
    assert r.steps and r.steps[-1].kind == "evaluate"


@pytest.mark.parametrize("text, needles", [
    ("model: digits\nsteps:\n  - quantize: {rung: int8}\n\x05", ["line 4", "not valid YAML", "#x0005"]),
    ('model: digits\nsteps:\n  - prune: {"a\\rb\\u2028": 1}\n', ["'a\\rb\\u2028'", "unknown field"]),
    ("model: digits\nname: ../x\nsteps:\n  - quantize: {rung: int8}\n", ["line 2", "name: a name is 1 to 200"]),
    ("model: '[/x]'\nsteps:\n  - quantize: {rung: int8}\n", ["line 1", "model: a model is a built-in name"]),
    ("model: digits\nout: \"a\\0b\"\nsteps:\n  - quantize: {rung: int8}\n", ["out is a folder path"]),
    ("model: digits\nsteps:\n  - export: []\n", ["steps.0.export", "valid dictionary"]),
])
def test_what_reaches_a_terminal_or_a_path_is_one_safe_line(text, needles):
    """Control characters, markup brackets, path separators and NULs stop in the parser, in one line."""
    msg = err(text)
    assert len(msg.splitlines()) == 1, msg
    for n in needles:
        assert n in msg, msg


def test_a_binary_file_is_not_a_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"model: digits\n\xff\xfe")
    with pytest.raises(BitladderError, match="is not UTF-8 text \\(byte 14\\)"):
        load_recipe(p)


def test_distributed_mode_reaches_the_training_steps_and_a_step_may_override_it():
    text = ("model: digits\ndistributed: {mode: fsdp}\nsteps:\n  - lowbit: {bits: 2}\n  - distill: {epochs: 1}\n"
            "  - finetune: {epochs: 1, distributed: ddp}\n")
    r = parse_recipe(text)
    assert [s.body.config().distributed for s in r.steps[1:]] == ["fsdp", "ddp"]
    r.distribute("fsdp")  # the command line's --distributed overrides every training step
    assert [s.body.config().distributed for s in r.steps[1:]] == ["fsdp", "fsdp"]
    plain = parse_recipe("model: digits\nsteps:\n  - finetune: {epochs: 1}\n")
    assert plain.steps[0].body.config().distributed == "ddp" and "distributed" not in str(plain.to_dict())
    assert "line 2" in err("model: digits\ndistributed: {mode: pipe}\nsteps:\n  - finetune: {}\n")
    assert "'ddp', 'fsdp' or 'pipeline'" in err("model: digits\ndistributed: {mode: pipe}\nsteps:\n  - finetune: {}\n")
    assert "line 2" in err("model: digits\ndistributed: {mode: fsdp, shards: 2}\nsteps:\n  - finetune: {}\n")


def test_pipeline_mode_names_its_stages_and_trains_replicated():
    r = parse_recipe("model: tinylm\ndistributed: {mode: pipeline, stages: 2, microbatches: 2}\n"
                     "steps:\n  - quantize: {rung: int8}\n  - finetune: {epochs: 1}\n")
    assert (r.pipeline.stages, r.pipeline.microbatches, r.pipeline.timeout_s) == (2, 2, 300.0)
    assert r.steps[1].body.config().distributed == "ddp"  # stages train replicated over the same processes
    r.pipelined(0)  # the command line's --pipeline 0: one process
    assert r.pipeline is None
    r.pipelined(3, timeout_s=60)
    assert (r.pipeline.mode, r.pipeline.stages, r.pipeline.timeout_s) == ("pipeline", 3, 60)
    assert "needs stages" in err("model: tinylm\ndistributed: {mode: pipeline}\nsteps:\n  - quantize: {rung: int8}\n")
    assert "stages applies to mode pipeline only" in err("model: tinylm\ndistributed: {mode: ddp, stages: 2}\n"
                                                         "steps:\n  - quantize: {rung: int8}\n")
    assert "line 2" in err("model: tinylm\ndistributed: {mode: pipeline, stages: 0}\nsteps:\n  - quantize: {}\n")
