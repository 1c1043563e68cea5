"""A local Hugging Face causal-LM folder (``config.json`` + safetensors weights) as a bitladder model.

The float model is transformers' own class for the folder's ``model_type`` (a row of :data:`ARCHITECTURES`),
wrapped in :class:`~bitladder.zoo.causal_lm.CausalLM` so its forward returns logits, in fp32 whatever the
checkpoint's dtype. It is built on the ``meta`` device and filled part by part from the shards
(:class:`~bitladder.io.hf_shards.Shards`), so a caller may fill only the parts it needs (streamed
quantisation fills one block at a time). Artifacts record the folder as the source ``hf:/absolute/path``;
:func:`bitladder.load` rebuilds from it while the folder is there. Text for evaluation and calibration is
the built-in corpus (:mod:`bitladder.zoo.corpus`), tokenised with the folder's tokenizer if it has one, else
as bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.io.hf_shards import Shards
from bitladder.zoo import classifier, corpus
from bitladder.zoo.classifier import is_classifier
from bitladder.zoo.causal_lm import CausalLM, blocks, encode
from bitladder.zoo.spec import ModelSpec
from bitladder.zoo.text import Text

PREFIX = "hf:"
EVAL_SENTENCES = 256
CALIB_SENTENCES = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _llama(cfg_dict: dict, device: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig.from_dict(cfg_dict)
    cfg._attn_implementation = "sdpa"  # both paths (streamed and in memory) must run the same attention
    with torch.device(device):
        lm = LlamaForCausalLM(cfg)
    lm.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)  # its buffers are computed, not in the checkpoint
    return lm


#: model_type -> builder of the (unfilled) transformers model on a device; the layout every row must have:
#: model.embed_tokens, model.layers.N, model.norm, lm_head (tied to the embedding when the config says so)
ARCHITECTURES: dict[str, Callable[[dict, str], nn.Module]] = {"llama": _llama}
#: encoder model types taken as sentence encoders (:mod:`bitladder.zoo.minilm`: masked mean pooling, L2
#: normalisation, cosine to fp32 as the metric); loaded whole with transformers' AutoModel, safetensors only
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra")


#: what a folder's model is taken as: its forward, metric and data follow (``--task``; default: from config.json)
TASKS = ("embedding", "classification", "causal-lm")
_TASK = "?task="  # a source's suffix naming a task the config does not imply: hf:/abs/path?task=embedding


def split_task(name: str) -> tuple[str, str | None]:
    """``(folder name, task asked for or None)`` of a source or path that may end in ``?task=TASK``."""
    path, sep, task = name.rpartition(_TASK)
    return (path, task) if sep else (name, None)


def natural_task(cfg: dict) -> str:
    """The task config.json implies: a ``*ForSequenceClassification`` classifies, an encoder embeds, the rest
    are causal LMs."""
    if is_classifier(cfg):
        return "classification"
    return "embedding" if cfg.get("model_type") in ENCODERS else "causal-lm"


def task_of(folder: Path, asked: str | None = None) -> str:
    """The task the folder's model runs as: ``asked`` where the checkpoint can serve it, else its config's.

    Beside the config's own task, one other is served: a classifier of an encoder family as a sentence
    encoder (its encoder, mean-pooled; the head is not used). A task needing weights the checkpoint lacks
    (a classification head, an LM head) is refused rather than filled with random ones."""
    cfg = read_config(folder, whole=True)
    natural = natural_task(cfg)
    if asked is None or asked == natural:
        return natural
    if asked not in TASKS:
        raise BitladderError(f"unknown task {asked!r}; accepted: {', '.join(TASKS)}")
    if asked == "embedding" and cfg["model_type"] in ENCODERS:
        return asked
    fits = [natural] + (["embedding"] if natural == "classification" and cfg["model_type"] in ENCODERS else [])
    raise BitladderError(f"{folder}: a {cfg['model_type']} {natural} checkpoint cannot run as {asked} (it has no "
                         f"weights for it); accepted here: {', '.join(fits)}")


def with_task(name: str, task: str | None) -> str:
    """The source of folder ``name`` run as ``task`` (checked), or ``name`` itself when no task is asked."""
    if task is None:
        return name
    folder = folder_of(name)
    task_of(folder, task)
    return source_with(folder, task)


def source_with(folder: Path, task: str | None) -> str:
    """The artifact source of ``folder``, naming ``task`` when one was asked for (a reload runs it the same way)."""
    return source_of(folder) + (_TASK + task if task else "")


def is_source(name: str | None) -> bool:
    """Whether ``name`` is an HF-folder source (``hf:PATH``) or a folder holding a config.json."""
    if not isinstance(name, str) or not name:
        return False
    return name.startswith(PREFIX) or (Path(name) / "config.json").is_file()


def folder_of(name: str) -> Path:
    """The folder of ``hf:PATH`` or of a plain path (a ``?task=`` suffix ignored), checked: it exists and holds
    a config.json."""
    name = split_task(name)[0]
    folder = Path(name[len(PREFIX):] if name.startswith(PREFIX) else name)
    if not folder.is_dir():
        raise BitladderError(f"model folder {folder} does not exist; accepted: a folder with config.json and "
                             "safetensors weights")
    if not (folder / "config.json").is_file():
        raise BitladderError(f"{folder} has no config.json; accepted: a Hugging Face model folder (config.json "
                             "and safetensors weights)")
    return folder


def source_of(folder: str | os.PathLike) -> str:
    """The artifact source naming ``folder``: ``hf:`` and its absolute path."""
    return PREFIX + str(Path(folder).resolve())


def _causal_types() -> dict[str, str]:
    """transformers' causal-LM model types (model_type -> class name), each loadable whole."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def read_config(folder: Path, whole: bool = False) -> dict:
    """config.json as a dict; BitladderError if it is not JSON or names an architecture not supported:
    by default the streamable ones (:data:`ARCHITECTURES`); with ``whole``, also sentence encoders and
    any causal LM transformers knows (loaded whole)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BitladderError(f"{folder / 'config.json'} is not valid JSON") from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if whole and kind and is_classifier(cfg):
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        if kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            return cfg
    if kind not in ARCHITECTURES and not (whole and (kind in ENCODERS or kind in _causal_types())):
        accepted = ", ".join(ARCHITECTURES) + (f", {', '.join(ENCODERS)} and transformers' causal LMs (gpt2, qwen2, "
                                               f"phi, ...)" if whole else " (streamed block by block)")
        raise BitladderError(f"{folder}: unsupported architecture {kind!r}; accepted model_type: {accepted}")
    return cfg


def is_encoder(folder: Path) -> bool:
    """Whether the folder holds a sentence encoder (mean-pooled embeddings, as sentence-transformers)."""
    cfg = read_config(folder, whole=True)
    return cfg["model_type"] in ENCODERS and not is_classifier(cfg)


def _whole_causal(folder: Path) -> CausalLM:
    """A causal LM of an architecture not streamed here, loaded whole by transformers (safetensors only)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, dtype=torch.float32,
                                              attn_implementation="sdpa")
    return CausalLM(lm).eval()


def skeleton(folder: Path) -> CausalLM:
    """The float model with every weight on the ``meta`` device (no memory), computed buffers real."""
    cfg = read_config(folder)
    return CausalLM(ARCHITECTURES[cfg["model_type"]](cfg, "meta")).eval()


def checkpoint_name(name: str, shards: Shards, tied: bool) -> str:
    """Where weight ``name`` (of the transformers model) lies in the checkpoint: a tied head reads the
    embedding."""
    if name == "lm_head.weight" and name not in shards and tied:
        return "model.embed_tokens.weight"
    return name


def fill(module: nn.Module, prefix: str, shards: Shards, tied: bool) -> nn.Module:
    """Replace ``module``'s parameters (on meta) by the checkpoint's tensors ``prefix + name``, as fp32."""
    state = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        t = shards.get(checkpoint_name(prefix + name, shards, tied))
        if tuple(t.shape) != tuple(p.shape):
            raise BitladderError(f"{shards.folder}: {prefix + name} has shape {list(t.shape)} in the checkpoint, "
                                 f"config.json implies {list(p.shape)}")
        state[name] = t.float() if t.is_floating_point() else t
    module.load_state_dict(state, strict=False, assign=True)
    return module


def build(name: str, weights: bool = True) -> nn.Module:
    """The whole float model of an HF folder (``hf:PATH`` or a path, optionally ``?task=``), weights read from
    its shards. ``weights=False`` (an artifact's loader, which assigns every stored tensor): a streamable
    causal LM comes as its skeleton, nothing read; other kinds are built whole as usual."""
    folder = folder_of(name)
    task = task_of(folder, split_task(name)[1])
    if task == "classification":
        return classifier.build(folder)
    if task == "embedding":
        from bitladder.zoo import minilm

        return minilm.build(str(folder))
    if read_config(folder, whole=True)["model_type"] not in ARCHITECTURES:
        return _whole_causal(folder)
    model = skeleton(folder)
    if not weights or torch.empty(0).is_meta:  # an artifact's loader, or a pipeline's plan on shapes: read nothing
        return model.eval()
    shards = Shards(folder)
    lm = model.lm
    fill(lm, "", shards, bool(lm.config.tie_word_embeddings))
    if lm.config.tie_word_embeddings:
        lm.lm_head.weight = lm.model.embed_tokens.weight  # one tensor, as transformers ties them
    return model.eval()


def tokenize(folder: Path, sentences: list[str], vocab: int) -> torch.Tensor:
    """The sentences as one token stream: the folder's tokenizer if it has one, else UTF-8 bytes."""
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:  # noqa: BLE001 - tokenizer loaders raise many types
            raise BitladderError(f"{folder}: cannot load its tokenizer: {str(e).splitlines()[0][:200]}") from None
        ids = torch.tensor(tok("\n".join(sentences) + "\n", add_special_tokens=False)["input_ids"], dtype=torch.long)
    else:
        ids = encode(sentences)
    if len(ids) and int(ids.max()) >= vocab:
        raise BitladderError(f"{folder}: its vocabulary ({vocab}) is smaller than the tokens of the text "
                             f"(max id {int(ids.max())}); add a tokenizer to the folder")
    return ids


def context(cfg: dict) -> int:
    """Tokens per calibration / evaluation row: 128, or fewer if the model's positions end sooner."""
    return min(128, int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 128))


def calibration(folder: Path, rows: int | None, batch: int = 8, text: Text | None = None) -> list[torch.Tensor]:
    """``rows`` calibration rows of corpus text or ``text``'s calibration half (never the evaluation half;
    None: up to 64), ``batch`` rows per tensor."""
    cfg = read_config(folder, whole=True)
    sentences = text.calib if text else corpus.calibration_sentences(CALIB_SENTENCES)
    stream = tokenize(folder, sentences, cfg["vocab_size"])
    t = context(cfg)
    have = len(stream) // t
    rows = min(64, have) if rows is None else rows
    if not 0 < rows <= have:
        raise BitladderError(f"calibration rows must be in 1..{have} (the text gives {have} rows of {t} "
                             f"tokens), got {rows}")
    return blocks(stream[: rows * t], batch, t)


def spec(name: str, text: Text | None = None) -> ModelSpec:
    """The ModelSpec of an HF folder: the whole float model, perplexity on held-out text (the built-in
    corpus, or ``text``: a user's file)."""
    folder = folder_of(name)
    asked = split_task(name)[1]
    task = task_of(folder, asked)
    if task == "classification":
        return classifier.spec(folder, source_of(folder), text)
    if task == "embedding":
        from bitladder.zoo import minilm

        return minilm.spec(str(folder), source_with(folder, asked), text and text.unlabelled("sentence encoders"))
    text = text and text.unlabelled("causal LMs")
    cfg = read_config(folder, whole=True)
    t = context(cfg)
    sentences = text.eval if text else corpus.eval_sentences(EVAL_SENTENCES)
    evals = blocks(tokenize(folder, sentences, cfg["vocab_size"]), 16, t)
    if not evals:
        raise BitladderError(f"{text.source if text else 'the corpus'}: too little evaluation text for one row "
                             f"of {t} tokens")
    calib = calibration(folder, None, 16, text)
    source = source_of(folder)
    return ModelSpec(name=folder.name, model=build(source), metric="perplexity", eval_batches=evals,
                     targets=torch.cat(evals), latency_batch=evals[0][:4], calib_batches=calib,
                     train_batches=calib, default_rungs=["fp32", "fp16", "int8", "int4-g32", "int4-g32-gptq"],
                     source=source, factory=lambda: build(source))
