"""A local Hugging Face sequence classifier (config ``architectures``: ``*ForSequenceClassification``).

transformers' own class, loaded whole from safetensors in fp32 and wrapped so a forward returns the logits.
Fidelity is accuracy: on the labels of a user's JSONL file (``--data``, a ``label`` on every line: a class
index or one of the config's label names) where it has them, else agreement with the fp32 model's
predicted class on the same text. Calibration and training use the other half of the text, never the
evaluated one; with labels, training steps fine-tune on them, else they distil from the fp32 model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo import minilm
from bitladder.zoo.spec import ModelSpec
from bitladder.zoo.text import Text, corpus_text

EVAL_SAMPLES = 256
CALIB_SAMPLES = 512
BATCH = 32


def is_classifier(cfg: dict) -> bool:
    """Whether config.json describes a sequence classifier."""
    return any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


class Classifier(nn.Module):
    """A transformers sequence classifier whose forward returns its logits."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, **kw).logits


def build(folder: str | os.PathLike) -> Classifier:
    """The classifier of ``folder`` from its safetensors, fp32, in eval mode."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        hf = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True,
                                                                dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise BitladderError(f"{folder}: cannot load the classifier: {str(e).splitlines()[0][:200]}") from None
    return Classifier(hf).eval()


def class_ids(labels: list, id2label: dict, source: str) -> torch.Tensor:
    """Labels (class indices or the config's label names) as class indices; one line for one that is neither."""
    names = {str(v): int(k) for k, v in id2label.items()}
    out = []
    for lab in labels:
        idx = lab if isinstance(lab, int) else names.get(lab)
        if idx is None or not 0 <= idx < len(id2label):
            raise BitladderError(f"{source}: label {lab!r} is not a class of this model; accepted: "
                                 f"0..{len(id2label) - 1} or {', '.join(sorted(names)[:8])}")
        out.append(idx)
    return torch.tensor(out, dtype=torch.long)


def spec(folder: Path, source: str, text: Text | None = None) -> ModelSpec:
    """The ModelSpec of the classifier in ``folder`` (named ``source`` in artifacts) on ``text`` (default: the
    built-in corpus, scored by agreement with fp32)."""
    text = text or corpus_text(EVAL_SAMPLES, CALIB_SAMPLES)
    model = build(folder)
    ev, cal = text.eval[:EVAL_SAMPLES], text.calib[:CALIB_SAMPLES]
    evals = minilm.tokenize(ev, BATCH, str(folder))
    calib = minilm.tokenize(cal, BATCH, str(folder))
    id2label = model.hf.config.id2label
    if text.eval_labels is not None:
        targets = class_ids(text.eval_labels[:EVAL_SAMPLES], id2label, text.source)
        train_targets = list(class_ids(text.calib_labels[:CALIB_SAMPLES], id2label, text.source).split(BATCH))
    else:  # agreement with fp32: its own predictions are the targets
        with torch.no_grad():
            targets = torch.cat([model(**b).argmax(-1) for b in evals])
        train_targets = None
    return ModelSpec(name=folder.name, model=model, metric="accuracy", eval_batches=evals, targets=targets,
                     latency_batch=evals[0], calib_batches=calib, train_batches=calib, train_targets=train_targets,
                     default_rungs=["fp32", "fp16", "int8", "int4-g64", "int4-g64-gptq", "int8-a8d"],
                     source=source, factory=functools.partial(build, folder))
