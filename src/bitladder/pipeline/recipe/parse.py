"""Recipes: a YAML file describing a compression pipeline, validated by a schema.

    model: digits                     # a built-in name or a factory 'package.module:function'
    steps:
      - prune: {method: magnitude, sparsity: 0.5}
      - finetune: {epochs: 10}
      - quantize: {rung: int4-g32}
      - evaluate: {}

Steps run in the order given; any subset, but in an order that can work: structural changes (prune,
lowrank) on float weights, then quantize (packed, post-training), then lowbit (quantisation-aware
layers), training steps (finetune, distill) anywhere before export, export and evaluate last. A lowbit
step must be followed by a training step. Errors name the field and its line in the file.

``distributed: {mode: ddp|fsdp}`` (top level) is how the training steps run under ``torchrun``: replicated
(DDP, the default) or sharded (FSDP2); a training step's own ``distributed`` overrides it.
``distributed: {mode: pipeline, stages: N}`` evaluates the result in N pipeline stages, one per torchrun
process (``microbatches``, ``timeout_s``; :mod:`bitladder.pipeline.parallel.evaluate`), beside the in-process
evaluation; training steps then run replicated (DDP) over the same processes.

>>> r = parse_recipe("model: digits\\nsteps:\\n  - quantize: {rung: int8}\\n")
>>> [s.kind for s in r.steps]
['quantize']
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps import STEPS, StepBody

_MODEL = re.compile(r"[A-Za-z_][\w.]*(?::[A-Za-z_]\w*)?")
_NAME = re.compile(r"[\w+-][\w .+-]{0,199}")

# the stage of each step: structural (1) < quantize (2) < lowbit (3) < export (4) < evaluate (5);
# training steps (0) may stand anywhere before export


class Step(BaseModel):
    """One parsed recipe step: its kind, validated body and source line."""
    kind: str
    body: StepBody
    line: int


class Distributed(BaseModel):
    """How the recipe runs under torchrun: ``mode`` ddp (training replicated) or fsdp (sharded parameters), or
    pipeline (the result also evaluated in ``stages`` pipeline stages, ``microbatches`` per batch, every send,
    receive and barrier bounded by ``timeout_s``)."""
    model_config = ConfigDict(extra="forbid")
    mode: Literal["ddp", "fsdp", "pipeline"] = "ddp"
    stages: int | None = Field(None, ge=1)
    microbatches: int = Field(4, ge=1)
    timeout_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _stages_for_pipeline(self) -> Distributed:
        if self.mode == "pipeline" and self.stages is None:
            raise ValueError("mode pipeline needs stages: the number of processes (torchrun --nproc-per-node)")
        if self.mode != "pipeline" and self.stages is not None:
            raise ValueError(f"stages applies to mode pipeline only, not {self.mode}")
        return self

    @property
    def training(self) -> str:
        """How training steps run: pipeline stages train replicated."""
        return "ddp" if self.mode == "pipeline" else self.mode


class Recipe(BaseModel):
    """A recipe file's top level: the model, an optional name and output folder, the distributed training
    mode, and the raw steps."""
    model_config = ConfigDict(extra="forbid")
    model: str
    name: str | None = None
    out: str | None = None
    distributed: Distributed | None = None
    steps: list[Any]

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not _MODEL.fullmatch(v):  # checked before the CLI shows it (rich reads '[...]' as markup)
            raise ValueError("a model is a built-in name (digits, minilm) or a factory 'package.module:function'")
        return v

    @field_validator("name")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):  # it names the output files and table rows
            raise ValueError("a name is 1 to 200 letters, digits, spaces or '._+-', not starting with '.' or a space")
        return v

    @field_validator("out")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        if v is not None and not (v and v.isprintable()):  # a NUL makes every file call raise ValueError
            raise ValueError("out is a folder path of printable characters")
        return v

    @property
    def label(self) -> str:
        """The recipe's name, for file names and reports."""
        return self.name or f"{self.model}-recipe"


class _Parsed:
    """A validated recipe: ``model``, ``name``, ``out`` and ``steps`` (each a :class:`Step`)."""

    def __init__(self, recipe: Recipe, steps: list[Step]) -> None:
        self.model, self.out, self.steps = recipe.model, recipe.out, steps
        self.name = recipe.label
        self.pipeline: Distributed | None = None
        if recipe.distributed is not None:
            self.distribute(recipe.distributed.training, override=False)
            if recipe.distributed.mode == "pipeline":
                self.pipeline = recipe.distributed

    def pipelined(self, stages: int, microbatches: int = 4, timeout_s: float = 300.0) -> None:
        """Evaluate the result in ``stages`` pipeline stages too (``stages`` 0: not)."""
        self.pipeline = (Distributed(mode="pipeline", stages=stages, microbatches=microbatches, timeout_s=timeout_s)
                         if stages else None)

    def distribute(self, mode: str, override: bool = True) -> None:
        """Train the training steps in distributed ``mode`` (those that name their own keep it unless
        ``override``)."""
        for s in self.steps:
            if s.body.training and (override or s.body.distributed is None):
                s.body.distributed = Distributed(mode=mode).mode

    def to_dict(self) -> dict:
        return {"model": self.model, "name": self.name,
                "steps": [{s.kind: s.body.model_dump(exclude_none=True)} for s in self.steps]}


def _node_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (the deepest that exists)."""
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        node, line = nxt, nxt.start_mark.line + 1
    return line


def _fail(source: str, root: yaml.Node | None, loc: tuple, msg: str) -> BitladderError:
    line = _node_line(root, loc)
    where = ".".join(str(p) if str(p).isprintable() else repr(str(p)) for p in loc) or "recipe"  # one line
    return BitladderError(f"{source}{f' line {line}' if line else ''}: {where}: {msg}")


def _pydantic_msg(e: ValidationError) -> tuple[tuple, str]:
    err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]  # a typo explains "missing"
    msg = err["msg"]
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    return tuple(err["loc"]), msg


def _check_order(steps: list[Step], fail) -> None:
    seen_stage, last_kind = 0, None
    for i, s in enumerate(steps):
        stage = s.body.stage
        if s.body.training:
            if seen_stage >= 4:
                fail((i, s.kind), f"{s.kind} cannot follow {last_kind}: training must come before export/evaluate")
            continue
        if stage < seen_stage or (stage == seen_stage and stage >= 2):
            why = ("pruning and factorisation need float weights" if stage == 1 else "each of quantize, lowbit, "
                   "export and evaluate appears once, in the order prune -> quantize -> lowbit -> export -> evaluate")
            fail((i, s.kind), f"{s.kind} cannot follow {last_kind}: {why}")
        seen_stage, last_kind = stage, s.kind
    for i, s in enumerate(steps):
        if s.body.needs_training and not any(t.body.training for t in steps[i + 1 :]):
            trainers = " or ".join(n for n, b in STEPS.items() if b.training)
            fail((i, s.kind), f"{s.kind} makes quantisation-aware layers: a {trainers} step must follow it")


def parse_recipe(text: str, source: str = "recipe") -> _Parsed:
    """Parse and validate recipe YAML ``text``; BitladderError naming ``source`` and the offending line."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, pos = getattr(e, "problem_mark", None), getattr(e, "position", None)  # parser / reader errors
        line = mark.line + 1 if mark else None if pos is None else text.count("\n", 0, pos) + 1
        where = f" line {line}" if line else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]  # a reader error's text runs on two lines
        raise BitladderError(f"{source}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise BitladderError(f"{source}: a recipe is a mapping with 'model' and 'steps'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        loc, msg = _pydantic_msg(e)
        raise _fail(source, root, loc, msg) from None

    def fail(loc: tuple, msg: str):
        raise _fail(source, root, ("steps", *loc), msg)

    if not recipe.steps:
        fail((), "a recipe needs at least one step; known steps: " + ", ".join(STEPS))
    steps = []
    for i, raw in enumerate(recipe.steps):
        if not isinstance(raw, dict) or len(raw) != 1:
            fail((i,), "each step is a mapping with one key, the step's name, e.g. '- quantize: {rung: int8}'")
        kind, body = next(iter(raw.items()))
        if kind not in STEPS:
            fail((i, kind), f"unknown step {kind!r}; known steps: {', '.join(STEPS)}")
        try:
            parsed = STEPS[kind].model_validate({} if body is None else body)  # '- export:' alone: defaults
            parsed.check()
        except ValidationError as e:
            loc, msg = _pydantic_msg(e)
            fail((i, kind, *loc), msg)
        except BitladderError as e:
            fail((i, kind), str(e))
        steps.append(Step(kind=kind, body=parsed, line=_node_line(root, ("steps", i)) or 0))
    _check_order(steps, fail)
    return _Parsed(recipe, steps)


def load_recipe(path: str | Path) -> _Parsed:
    """Read and parse the recipe file at ``path``; BitladderError if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise BitladderError(f"recipe {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BitladderError(f"recipe {path} is not UTF-8 text (byte {e.start}); a recipe is a YAML file") from None
    return parse_recipe(text, source=str(path))
