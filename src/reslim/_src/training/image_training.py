"""Training image classifiers the standard way, with a mean-field training scheme plugged in
(docs/mean-field.md): SGD with momentum and weight decay, a cosine or step learning-rate schedule,
random-crop (zero padding) and horizontal-flip augmentation, mini-batches; CPU by default, CUDA
when present (``device="auto"``).

Data: :func:`image_data` gives scikit-learn's 8x8 digits (1 channel) or CIFAR-10/100 from disk
(:mod:`reslim._src.training.cifar`), as float32 tensors normalised per channel by the training
set's mean and standard deviation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..diagnostics.mean_field import ModuleBlocks, ResNetBlocks, mean_field_view
from .schemes import Scheme, surrogate_epochs


@dataclass
class ImageData:
    """Train and test images ``(n, C, H, W)`` float32 and labels ``(n,)`` int64."""

    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    name: str

    @property
    def channels(self) -> int:
        return int(self.X.shape[1])


def _normalise(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = Xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = Xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return (Xtr - mean) / std, (Xte - mean) / std


def image_data(kind: str = "digits", data_dir: str | None = None, n_train: int | None = None,
               n_test: int | None = None, seed: int = 0, test_fraction: float = 0.25) -> ImageData:
    """``digits`` (1797 8x8 images, 10 classes; a seeded ``test_fraction`` split), ``cifar10`` or
    ``cifar100`` (official splits from ``data_dir``); ``n_train`` / ``n_test`` subsample (seeded)."""
    rng = np.random.default_rng(seed)
    if kind == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        X = raw.images.astype(np.float64)[:, None] / 16.0
        y = raw.target.astype(np.int64)
        perm = rng.permutation(len(X))
        n_te = int(round(test_fraction * len(X)))
        te, tr = perm[:n_te], perm[n_te:]
        Xtr, ytr, Xte, yte, classes = X[tr], y[tr], X[te], y[te], 10
    elif kind in ("cifar10", "cifar100"):
        from .cifar import cifar_images

        Xtr_u, ytr, Xte_u, yte = cifar_images(kind, data_dir)
        Xtr, Xte = Xtr_u.astype(np.float64) / 255.0, Xte_u.astype(np.float64) / 255.0
        classes = 10 if kind == "cifar10" else 100
    else:
        raise ValueError(f"data.kind must be digits, cifar10 or cifar100, got {kind!r}")
    for name, v, have in (("n_train", n_train, len(Xtr)), ("n_test", n_test, len(Xte))):
        if v is not None and not 1 <= v <= have:
            raise ValueError(f"data.{name}: {v} requested, the set has {have}")
    if n_train is not None:
        i = rng.permutation(len(Xtr))[:n_train]
        Xtr, ytr = Xtr[i], ytr[i]
    if n_test is not None:
        i = rng.permutation(len(Xte))[:n_test]
        Xte, yte = Xte[i], yte[i]
    Xtr, Xte = _normalise(Xtr, Xte)
    return ImageData(torch.as_tensor(Xtr, dtype=torch.float32), torch.as_tensor(ytr),
                     torch.as_tensor(Xte, dtype=torch.float32), torch.as_tensor(yte), classes,
                     f"{kind}(seed={seed})")


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crops of the zero-padded images (offsets uniform in ``0..2 pad``) and, with
    ``flip``, horizontal flips with probability 1/2, independently per image."""
    n, _, H, W = x.shape
    if pad > 0:
        xp = nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(H)[None]).to(x.device)  # (n, H)
        cols = (ox[:, None] + torch.arange(W)[None]).to(x.device)  # (n, W)
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        f = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  #: ``cosine`` or ``step`` (x0.1 at 50% and 75% of the epochs)
    pad: int = 1
    flip: bool = False
    probe: int = 512  #: training samples (unaugmented) on which the loss around reorderings is measured
    device: str = "auto"


@dataclass
class TrainResult:
    test_accuracy: float
    train_accuracy: float
    final_loss: float
    epoch_loss: list[float] = field(default_factory=list)
    epoch_test_accuracy: list[float] = field(default_factory=list)
    #: per event: epoch, kind (``reorder`` / ``switch``), probe loss before and right after
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return 0.01 if epoch >= 0.75 * epochs else 0.1 if epoch >= 0.5 * epochs else 1.0
    raise ValueError(f"schedule must be cosine or step, got {schedule!r}")


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` (eval mode) on ``X, y``."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(X), batch):
        out = model(X[i:i + batch])
        loss += float(nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum"))
        correct += int((out.argmax(-1) == y[i:i + batch]).sum())
    model.train(was)
    return loss / len(X), correct / len(X)


def train_image_classifier(model: nn.Module, data: ImageData, scheme: Scheme, config: TrainConfig,
                           seed: int = 0, view: ResNetBlocks | ModuleBlocks | None = None) -> TrainResult:
    """Train ``model`` on ``data`` under ``scheme`` (module docstring); the data order,
    augmentation and the scheme's random choices are drawn from ``seed``."""
    t0 = time.perf_counter()
    dev = resolve_device(config.device)
    model.to(dev)
    view = mean_field_view(model) if view is None else view
    dtype = next(model.parameters()).dtype
    X, y = data.X.to(dev, dtype), data.y.to(dev)
    Xte, yte = data.X_test.to(dev, dtype), data.y_test.to(dev)
    probe = slice(0, min(config.probe, len(X)))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    E, k_sur = config.epochs, surrogate_epochs(scheme, config.epochs)
    surrogate = view.surrogate() if k_sur > 0 else None
    res = TrainResult(math.nan, math.nan, math.nan, device=str(dev))
    for epoch in range(E):
        net = surrogate if surrogate is not None and epoch < k_sur else model
        for g in opt.param_groups:
            g["lr"] = config.lr * _lr_factor(config.schedule, epoch, E)
        model.train()
        order = torch.randperm(len(X), generator=gen).to(dev)
        total, count = 0.0, 0
        for i in range(0, len(X), config.batch_size):
            idx = order[i:i + config.batch_size]
            xb = augment(X[idx], gen, config.pad, config.flip)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        res.epoch_loss.append(total / count)
        if surrogate is not None and epoch == k_sur - 1:
            before = evaluate(surrogate, X[probe], y[probe])[0]
            after = evaluate(model, X[probe], y[probe])[0]
            res.events.append({"epoch": epoch, "kind": "switch", "before": before, "after": after})
        if epoch >= k_sur:
            before = evaluate(model, X[probe], y[probe])[0]
            perms = scheme.after_epoch(view, epoch, E, rng, opt)
            if perms is not None:
                after = evaluate(model, X[probe], y[probe])[0]
                res.events.append({"epoch": epoch, "kind": "reorder", "before": before, "after": after,
                                   "moved": int(sum(int(p != list(range(len(p)))) for p in perms))})
        res.epoch_test_accuracy.append(evaluate(model, Xte, yte)[1])
    res.final_loss, res.train_accuracy = evaluate(model, X, y)
    res.test_accuracy = evaluate(model, Xte, yte)[1]
    res.seconds = time.perf_counter() - t0
    return res
