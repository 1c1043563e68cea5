"""``digits``: a small CNN on scikit-learn's bundled handwritten digits (UCI, 1,797 8x8 images).

Trained with a fixed seed; the weights ship beside this file (160 KB), as tinylm's do, because training
on another CPU makes another model (zoo/causal_lm.py). Without the file, training runs on first use (a few
seconds on 2 cores) and is cached as safetensors.
Train/test split: stratified, 25 % test (450 images), ``random_state=0``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.zoo.cache import cache_dir
from bitladder.zoo.spec import ModelSpec

TRAIN = {"epochs": 60, "lr": 2e-3, "batch": 64, "seed": 0, "weight_decay": 1e-4}
VERSION = "v1"
#: what :func:`train` gave under :data:`bitladder.zoo.cache.PINNED` on an AMD EPYC (every host evaluates these)
SHIPPED = Path(__file__).with_name(f"digits-cnn-{VERSION}.safetensors")


class DigitsCNN(nn.Module):
    """Small CNN for the 8x8 digits: three convolutions, two Linear layers, 10 classes."""
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_data() -> dict[str, torch.Tensor]:
    """sklearn's digits as (N, 1, 8, 8) tensors in [0, 1], split into stratified train and test sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=0.25, random_state=0, stratify=d.target)
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def train(data: dict[str, torch.Tensor]) -> DigitsCNN:
    """Train a DigitsCNN on the training split with the fixed ``TRAIN`` settings; returned in eval mode."""
    g = torch.Generator().manual_seed(TRAIN["seed"])
    torch.manual_seed(TRAIN["seed"])
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, TRAIN["epochs"])
    x, y = data["x_train"], data["y_train"]
    model.train()
    for _ in range(TRAIN["epochs"]):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), TRAIN["batch"]):
            b = perm[i : i + TRAIN["batch"]]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def pretrained(data: dict[str, torch.Tensor] | None = None) -> DigitsCNN:
    """The trained fp32 CNN: the shipped weights, else from the cache or trained now (and cached atomically)."""
    model = DigitsCNN()
    if SHIPPED.exists():
        try:
            model.load_state_dict(load_file(str(SHIPPED)))
            return model.eval()
        except Exception:  # a damaged install: train as without the file, never trust it
            model = DigitsCNN()
    path = cache_dir() / f"digits-cnn-{VERSION}.safetensors"
    if path.exists():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a damaged cache is retrained, not trusted
            path.unlink(missing_ok=True)
    model = train(data or load_data())
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model


def train_batches(data: dict[str, torch.Tensor], batch: int = 64) -> tuple[list, list]:
    """The training split as (inputs, targets) lists of shuffled batches of ``batch`` rows, fixed seed."""
    perm = torch.randperm(len(data["y_train"]), generator=torch.Generator().manual_seed(1))
    idx = [perm[i : i + batch] for i in range(0, len(perm), batch)]
    return [data["x_train"][i] for i in idx], [data["y_train"][i] for i in idx]


def spec() -> ModelSpec:
    """The digits ModelSpec: the pretrained CNN with its evaluation, calibration and training data."""
    data = load_data()
    xs, ys = train_batches(data)
    return ModelSpec(
        name="digits", model=pretrained(data), metric="accuracy",
        eval_batches=[data["x_test"]], targets=data["y_test"], latency_batch=data["x_test"],
        calib_batches=[data["x_train"][:256]], train_batches=xs, train_targets=ys,
        default_rungs=["fp64", "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4-g32",
                       "int3-g32-asym", "int2-g32-asym", "ternary", "binary"],
        source="digits", factory=DigitsCNN,
    )
