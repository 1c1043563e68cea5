"""``tinylm``: a small Llama-style causal language model, trained on the project's corpus and shipped.

transformers' own ``LlamaForCausalLM`` (RMSNorm, rotary positions, SwiGLU MLP, untied embeddings), so
the LLM methods (GPTQ, AWQ, SmoothQuant, HQQ, per-token activations) meet real ``nn.Linear`` layers
fed by RMSNorm, as in the models they were designed for. Tokens are bytes (vocabulary 256: no
tokenizer to build or ship, any text encodes). Trained once with a fixed seed on the standard
library's docstring sentences (:func:`bitladder.zoo.corpus.training_sentences`, never the evaluation
half). The trained weights ship beside this file (``tinylm-v1.safetensors``, 2 MB): float training is
not bit-reproducible across CPUs (an AVX-512 host's sgemm sums in another order, and 250 steps turn that
into another model, whose int4 agreement differed by 3 points), so every host evaluates these weights.
They are what :func:`train` gave on an AMD EPYC with torch's and MKL's dispatch pinned to AVX2 on one
thread (:data:`bitladder.zoo.cache.PINNED`; an Intel Xeon under the same pin trains a model as good, not the
same bits); without the shipped file, training runs on first use and is cached.
Evaluation text is :func:`~bitladder.zoo.corpus.eval_sentences`, calibration and distillation text the
disjoint :func:`~bitladder.zoo.corpus.calibration_sentences`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.zoo import corpus
from bitladder.zoo.cache import cache_dir
from bitladder.zoo.spec import ModelSpec
from bitladder.zoo.text import Text

VOCAB = 256  # one token per byte
ARCH = {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 384, "context": 128}
TRAIN = {"steps": 250, "batch": 16, "lr": 6e-3, "warmup": 20, "weight_decay": 0.01, "seed": 0}
VERSION = "v1"
SHIPPED = Path(__file__).with_name(f"tinylm-{VERSION}.safetensors")
EVAL_SENTENCES = 256
CALIB_SENTENCES = 256
BATCH = 16  # blocks of ``context`` tokens per evaluation / calibration batch


def build() -> CausalLM:
    """An untrained model of the fixed architecture (weights from the current torch seed), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=ARCH["hidden"], intermediate_size=ARCH["intermediate"],
                      num_hidden_layers=ARCH["layers"], num_attention_heads=ARCH["heads"],
                      num_key_value_heads=ARCH["heads"], max_position_embeddings=ARCH["context"],
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    return CausalLM(LlamaForCausalLM(cfg)).eval()


class CausalLM(nn.Module):
    """A Hugging Face causal LM whose forward returns the logits tensor (batch, tokens, vocab)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:  # without one transformers looks for packed sequences: a diff ONNX lacks
            attention_mask = torch.ones_like(input_ids)
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def encode(sentences: list[str]) -> torch.Tensor:
    """The sentences as one byte stream, a newline after each (int64 token ids)."""
    data = "".join(s + "\n" for s in sentences).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def blocks(stream: torch.Tensor, batch: int = BATCH, context: int | None = None) -> list[torch.Tensor]:
    """The stream cut into consecutive blocks of ``context`` tokens (the tail dropped), ``batch`` per tensor."""
    t = context or ARCH["context"]
    rows = stream[: len(stream) // t * t].view(-1, t)
    return [rows[i : i + batch] for i in range(0, len(rows), batch)]


def _lr(step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    frac = (step - TRAIN["warmup"]) / max(1, TRAIN["steps"] - TRAIN["warmup"])
    return TRAIN["lr"] * (0.1 + 0.45 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item()))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(stream: torch.Tensor, steps: int | None = None) -> CausalLM:
    """Train a fresh model on random ``context``-token windows of ``stream`` with the fixed ``TRAIN``
    settings (``steps`` overrides the count, for tests); returned in eval mode."""
    steps = TRAIN["steps"] if steps is None else steps
    g = torch.Generator().manual_seed(TRAIN["seed"])
    torch.manual_seed(TRAIN["seed"])
    model = build()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=TRAIN["lr"], betas=(0.9, 0.95))
    t = ARCH["context"]
    model.train()
    # one thread: the weights do not depend on the machine's core count, and on shared cores two threads
    # ran a step five times slower than one (OpenMP waits for a descheduled partner)
    with _threads(1):
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = _lr(step)
            start = torch.randint(0, len(stream) - t - 1, (TRAIN["batch"],), generator=g)
            window = torch.stack([stream[s : s + t + 1] for s in start.tolist()])
            logits = model(window[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model.eval()


def cache_path() -> os.PathLike:
    """Where the trained weights are cached."""
    return cache_dir() / f"tinylm-{VERSION}.safetensors"


def _load(path) -> CausalLM | None:
    model = build()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception:  # a damaged cache is retrained, not trusted
        return None
    return model.eval()


def pretrained() -> CausalLM:
    """The trained fp32 model: the shipped weights, else from the cache or trained now (and cached atomically).

    A lock file makes a second process (pytest-xdist's other worker) wait for the first's training
    instead of training again."""
    if SHIPPED.exists() and (model := _load(SHIPPED)) is not None:
        return model
    path = cache_path()
    if path.exists() and (model := _load(path)) is not None:
        return model
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and (model := _load(path)) is not None:
            return model
        model = train(encode(corpus.training_sentences()))
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model


def spec(text: Text | None = None) -> ModelSpec:
    """The tinylm ModelSpec: held-out text for evaluation, disjoint calibration / distillation text (the
    built-in corpus, or ``text``: a user's file)."""
    text = text or Text(corpus.eval_sentences(EVAL_SENTENCES), corpus.calibration_sentences(CALIB_SENTENCES),
                        "corpus")
    evals, calib = blocks(encode(text.eval)), blocks(encode(text.calib))
    if not evals or not calib:
        raise BitladderError(f"{text.source}: too little text for one block of {ARCH['context']} bytes in each "
                             f"half (evaluation, calibration)")
    return ModelSpec(
        name="tinylm", model=pretrained(), metric="perplexity", eval_batches=evals,
        targets=torch.cat(evals), latency_batch=evals[0][:4], calib_batches=calib, train_batches=calib,
        default_rungs=["fp32", "fp16", "bf16", "fp8_e4m3", "int8", "int8-a8d", "int4-g32", "int4-g32-gptq",
                       "int4-g32-awq", "int4-g32-asym-hqq", "int3-g32-asym-gptq", "int2-g32-asym-gptq"],
        source="tinylm", factory=build,
    )
