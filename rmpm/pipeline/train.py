"""Training one recipe: a readable loop, every hyperparameter read from the recipe.

:func:`fit` is a pure function of the recipe (and the device): the same recipe
gives the same weights and numbers on CPU, bit for bit, whatever else runs in
the same process, because every random draw comes from generators seeded by the
recipe and the global RNG is forked, never touched. The batched ensemble engine
for GPUs lives in :mod:`rmpm.pipeline.ensemble`; it must agree with this loop.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .models import build_model
from .recipe import Recipe

#: test inputs used for per-epoch learning curves (cheap; the final test
#: accuracy always uses the whole test split)
CURVE_TEST_SIZE = 1000
#: inputs per forward pass when a model is only evaluated. Small enough that a
#: batch's activations stay in the CPU's caches: the same 10,000 Fashion-MNIST
#: images pass through the default CNN in 0.68x the time in batches of 250 as in
#: batches of 1,000, with bit-identical outputs (every input is computed on its
#: own; tests/pipeline/test_train.py checks the identity)
EVAL_BATCH = 256
#: dropout masks come from the global RNG seeded with ``order_seed + DROPOUT_SEED_OFFSET``
#: (an offset, so that dropout and the data order are not the same random stream)
DROPOUT_SEED_OFFSET = 7919


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device | None = "auto",
                   name: str = "device") -> torch.device:
    """``auto`` (CUDA if PyTorch sees a GPU, else CPU) or a device that exists here;
    anything else is one clear error naming ``name`` and the allowed values, raised
    before any data is loaded."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = f"choose one of: {', '.join(DEVICES)} (N: a GPU index)"
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}={device!r} is not a device; {allowed}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}={device!r} is not supported; {allowed}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r}: PyTorch sees no CUDA GPU on this machine "
                         "(torch.cuda.is_available() is False); use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} "
                         f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r}: no Apple MPS device here; use cpu or auto")
    return dev


@dataclass
class TrainData:
    """Normalised float tensors for one data set, resident on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    in_shape: tuple[int, ...]


def prepare(dataset: str, device: torch.device) -> TrainData:
    """Load and normalise a data set once; recipes that share it reuse it."""
    train, test = D.load(dataset, "train"), D.load(dataset, "test")
    mean, std = D.normalization(dataset)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - m) / s).to(device)

    return TrainData(norm(train.x), train.y.to(device), norm(test.x), test.y.to(device),
                     len(train.classes), tuple(train.x.shape[1:]))


def normalise(dataset: str, x01: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] (e.g. corrupted test images) to the model's input scale."""
    mean, std = D.normalization(dataset)
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    return (x01 - m) / s


def train_indices(recipe: Recipe, n: int) -> torch.Tensor:
    """Which training examples this recipe sees (a subset, a bootstrap, or all)."""
    if recipe.train_size is None and not recipe.bootstrap:
        return torch.arange(n)
    size = recipe.train_size if recipe.train_size is not None else n
    if size > n:
        raise ValueError(f"train_size={size} exceeds the {n} training examples of {recipe.dataset!r}")
    return D.subset_indices(n, size, recipe.subset_seed, bootstrap=recipe.bootstrap)


def lr_at(recipe: Recipe, step: int, total: int, per_epoch: int) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine decay to 0."""
    warm = int(round(recipe.warmup_epochs * per_epoch))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    if recipe.schedule == "constant":
        return recipe.lr
    t = (step - warm) / max(1, total - warm)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    """The recipe's optimizer, fused on the CPU and CUDA: one kernel per parameter
    tensor instead of about ten small ones (the default SmallCNN's update takes 0.11
    instead of 0.35 ms). The fused kernel is vectorised like every ATen kernel, so
    deterministic mode's pinned ISA applies to it."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                 fused=fused)
    # torch refuses nesterov without momentum; with momentum 0 it is plain SGD anyway
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.momentum > 0, weight_decay=recipe.weight_decay,
                           fused=fused)


def augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding (1/8 of the side) and, for ``crop_flip``, h-flips.

    Vectorised: one gather for the whole batch. Offsets come from ``g`` on the
    CPU so that CPU and GPU runs draw the same augmentations.
    """
    if kind == "none":
        return x
    b, p = x.shape[0], crop_padding(x.shape[2])
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
    flip = (torch.rand(b, generator=g) < 0.5).to(x.device) if kind == "crop_flip" else None
    return crop_and_flip(x, dy, dx, flip, p)


def crop_padding(height: int) -> int:
    """Zero padding of the random crop: 1/8 of the side, at least 1."""
    return max(1, height // 8)


def crop_and_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                  flip: torch.Tensor | None, p: int) -> torch.Tensor:
    """Crops of ``x`` (B, C, H, W) padded by ``p``, at row/column offsets ``dy``/``dx``
    (B,), mirrored where ``flip`` (B,) is true: one gather for the whole batch."""
    b, c, h, w = x.shape
    xp = F.pad(x, (p, p, p, p))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = xp[bi, ci, rows, cols]
    if flip is not None:
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch over ``n`` examples. A last batch of one example breaks
    BatchNorm, so only that case is dropped."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def history_row(epoch: int, train_loss: float, train_acc_running: float, test_acc_sample: float,
                test_loss_sample: float, seconds: float) -> dict[str, float]:
    """One epoch of a learning curve (the same keys for every engine)."""
    return {"epoch": epoch, "train_loss": train_loss, "train_acc_running": train_acc_running,
            "test_acc_sample": test_acc_sample, "test_loss_sample": test_loss_sample,
            "seconds": seconds}


def final_metrics(train_acc: float, train_loss: float, test_acc: float, test_loss: float,
                  steps: int, train_examples: int, train_seconds: float, device: torch.device,
                  engine: str, **extra: Any) -> dict[str, Any]:
    """A trained model's metrics (the same keys for every engine, plus ``extra``)."""
    return {"train_acc": train_acc, "train_loss": train_loss, "test_acc": test_acc,
            "test_loss": test_loss, "gap": train_acc - test_acc, "steps": steps,
            "train_examples": train_examples, "train_seconds": train_seconds,
            "device": str(device), "engine": engine, **extra}


@torch.no_grad()
def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        yy = y[i:i + batch_size]
        loss += F.cross_entropy(out, yy, reduction="sum").item()
        correct += (out.argmax(1) == yy).sum().item()
    return correct / len(x), loss / len(x)


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def fit(recipe: Recipe, device: str | torch.device | None = "auto",
        data: TrainData | None = None, progress: bool = False) -> TrainResult:
    """Train one model from ``recipe``; returns the model (on the CPU, eval mode) and metrics."""
    dev = resolve_device(device)
    if data is None:
        data = prepare(recipe.dataset, dev)
    idx = train_indices(recipe, len(data.x_train)).to(dev)
    n = len(idx)
    per_epoch = steps_per_epoch(n, recipe.batch_size)
    total = per_epoch * recipe.epochs
    curve_idx = D.sample_indices(len(data.x_test), min(CURVE_TEST_SIZE, len(data.x_test)), 0).to(dev)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        # Dropout masks use the global RNG: seed it from the recipe, inside the fork.
        torch.manual_seed(recipe.order_seed + DROPOUT_SEED_OFFSET)
        model = build_model(recipe.arch, data.in_shape, data.n_classes, recipe.width,
                            recipe.dropout, seed=recipe.init_seed).to(dev)
        opt = make_optimizer(recipe, model.parameters())
        g = torch.Generator().manual_seed(recipe.order_seed)
        mix_rng = np.random.default_rng(recipe.order_seed)
        history: list[dict[str, float]] = []
        step, t0 = 0, time.perf_counter()
        epochs = range(recipe.epochs)
        if progress:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc=f"train {recipe.key()[:8]}", leave=False)
        for epoch in epochs:
            model.train()
            perm = idx[torch.randperm(n, generator=g).to(dev)]
            run_loss, run_correct, seen = 0.0, 0, 0
            for b in range(per_epoch):
                bi = perm[b * recipe.batch_size:(b + 1) * recipe.batch_size]
                x, y = augment(data.x_train[bi], recipe.augment, g), data.y_train[bi]
                for group in opt.param_groups:
                    group["lr"] = lr_at(recipe, step, total, per_epoch)
                if recipe.mixup_alpha > 0:
                    lam = float(mix_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))
                    j = torch.randperm(len(bi), generator=g).to(dev)
                    out = model(lam * x + (1 - lam) * x[j])
                    loss = (lam * F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
                            + (1 - lam) * F.cross_entropy(out, y[j],
                                                          label_smoothing=recipe.label_smoothing))
                else:
                    out = model(x)
                    loss = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                run_loss += loss.item() * len(bi)
                run_correct += (out.argmax(1) == y).sum().item()
                seen += len(bi)
            if not math.isfinite(run_loss):
                raise FloatingPointError(f"training diverged (loss {run_loss}) for recipe {recipe}")
            acc, tl = evaluate_split(model, data.x_test[curve_idx], data.y_test[curve_idx])
            history.append(history_row(epoch + 1, run_loss / seen, run_correct / seen, acc, tl,
                                       time.perf_counter() - t0))
    train_time = time.perf_counter() - t0
    seen_idx = idx.unique()  # a bootstrap repeats examples; score each once
    train_acc, train_loss = evaluate_split(model, data.x_train[seen_idx], data.y_train[seen_idx])
    test_acc, test_loss = evaluate_split(model, data.x_test, data.y_test)
    metrics = final_metrics(train_acc, train_loss, test_acc, test_loss, total, n, train_time, dev,
                            "single")
    return TrainResult(model.cpu().eval(), metrics, history)
