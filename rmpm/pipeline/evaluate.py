"""What is measured on a trained model: predictions on i.i.d. and shifted test
inputs, probe-layer activations, accuracies.

An :class:`EvalSpec` fixes which test inputs, which corruptions and severities,
and how convolutional activations are reduced; with the recipe it keys an
evaluation entry in the store. :func:`evaluate` handles many models at once so
that each corrupted test set is generated once and then dropped (memory stays
bounded by one shifted set, whatever the number of corruptions).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from .shifts import CORRUPTIONS, SEVERITIES, corrupt
from .._checks import check_range
from .recipe import content_key

EVAL_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalSpec:
    """Which inputs a model is evaluated on and what is kept.

    ``n_test`` i.i.d. test inputs (a seeded sample; None = the whole test split)
    get their predicted probabilities stored, on the clean inputs and on every
    (corruption, severity). The first ``n_probe`` of them get their probe-layer
    activations stored: fully-connected layers as they are; convolutional
    layers in both conventions, spatially average-pooled (``pool``) and as
    ``positions_per_input`` seeded spatial positions per input (``positions``).
    """

    n_test: int | None = 1000
    n_probe: int = 500
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 3, 5)
    shift_seed: int = 0
    sample_seed: int = 0
    positions_per_input: int = 4

    def __post_init__(self) -> None:
        if self.n_test is not None:
            check_range("n_test", self.n_test, 1, integer=True)
        check_range("n_probe", self.n_probe, 1, integer=True)
        if self.n_test is not None and self.n_probe > self.n_test:
            raise ValueError(f"n_probe={self.n_probe} must be <= n_test={self.n_test}")
        for c in self.corruptions:
            if c not in CORRUPTIONS:
                raise ValueError(f"corruption {c!r} is not allowed; choose from: "
                                 f"{', '.join(CORRUPTIONS)}")
        for s in self.severities:
            if s not in SEVERITIES:
                raise ValueError(f"severity {s!r} is not allowed; choose from: {SEVERITIES}")
        check_range("positions_per_input", self.positions_per_input, 1, integer=True)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["corruptions"], d["severities"] = list(self.corruptions), list(self.severities)
        return d

    def key(self) -> str:
        return content_key({"schema": EVAL_SCHEMA_VERSION, "spec": self.to_dict()})

    @property
    def shifts(self) -> list[tuple[str, int]]:
        return [(c, s) for c in self.corruptions for s in self.severities]


def test_sample(dataset: str, spec: EvalSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, images in [0,1], labels) of the i.i.d. test sample."""
    test = D.load(dataset, "test")
    n = test.n if spec.n_test is None else min(spec.n_test, test.n)
    idx = D.sample_indices(test.n, n, spec.sample_seed)
    return idx, test.x[idx].float() / 255.0, test.y[idx]


def pred_key(kind: str = "iid", severity: int | None = None, prefix: str = "probs") -> str:
    """Name of stored predictions (or of a table column with another ``prefix``):
    ``probs:iid`` or ``probs:<kind>:<severity>``. :func:`shift_of` parses it."""
    return f"{prefix}:iid" if kind == "iid" else f"{prefix}:{kind}:{severity}"


def shift_of(key: str, prefix: str = "probs") -> tuple[str, int]:
    """``(kind, severity)`` of a shifted key ``<prefix>:<kind>:<severity>`` (the
    inverse of :func:`pred_key`)."""
    bits = key.split(":")
    if len(bits) != 3 or bits[0] != prefix:
        raise ValueError(f"{key!r} is not a shifted key '{prefix}:<kind>:<severity>'")
    return bits[1], int(bits[2])


def shifts_in(keys: Iterable[str], prefix: str = "probs") -> list[tuple[str, int]]:
    """``(kind, severity)`` of every shifted ``<prefix>:<kind>:<severity>`` key among
    ``keys`` (stored arrays or table columns), in their order."""
    out = []
    for k in keys:
        bits = k.split(":")
        if len(bits) == 3 and bits[0] == prefix:
            out.append(shift_of(k, prefix))
    return out


def act_key(layer: str, conv: str | None = None) -> str:
    """Name of a layer's stored activations: ``act:<layer>`` (vectors) or
    ``act:<layer>:pool|positions`` (conv maps)."""
    return f"act:{layer}" if conv is None else f"act:{layer}:{conv}"


def layers_in(keys: Iterable[str]) -> list[str]:
    """Probe layers among stored array names, in their order, each once."""
    return list(dict.fromkeys(k.split(":")[1] for k in keys if k.startswith("act:")))


@torch.no_grad()
def _probs(model: nn.Module, x: torch.Tensor, device: torch.device,
           bs: int | None = None) -> np.ndarray:
    from .train import EVAL_BATCH
    bs = bs or EVAL_BATCH
    out = [F.softmax(model(x[i:i + bs].to(device)).float(), dim=1).cpu()
           for i in range(0, len(x), bs)]
    return torch.cat(out).numpy().astype(np.float32)


def reduce_activations(acts: dict[str, torch.Tensor], spec: EvalSpec) -> dict[str, np.ndarray]:
    """Probe activations as 2-D arrays: ``act:<layer>`` (fc) or ``act:<layer>:pool|positions``."""
    from ..measures.similarity import flatten_conv
    out = {}
    for layer, a in acts.items():
        if a.dim() == 4:
            n = a.shape[0]
            out[act_key(layer, "pool")] = flatten_conv(a, mode="pool").numpy().astype(np.float32)
            pos, owner = flatten_conv(a, mode="positions", max_points=n * spec.positions_per_input,
                                      seed=spec.sample_seed, return_inputs=True)
            out[act_key(layer, "positions")] = np.asarray(pos, dtype=np.float32)
            # which probe input each row comes from: resampling draws inputs, not rows
            out[f"rows:{layer}:positions"] = np.asarray(owner, dtype=np.int32)
        else:
            out[act_key(layer)] = a.reshape(a.shape[0], -1).numpy().astype(np.float32)
    return out


def evaluate(models: Sequence[nn.Module], dataset: str, spec: EvalSpec,
             device: str | torch.device = "cpu") -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Evaluate each model under ``spec``; returns (metrics, arrays) per model."""
    from ..measures.activations import capture
    from .train import EVAL_BATCH, normalise
    device = torch.device(device)
    idx, x01, y = test_sample(dataset, spec)
    yn = y.numpy()
    results: list[tuple[dict, dict]] = []
    for m in models:
        m.to(device).eval()
    xin = normalise(dataset, x01)
    for m in models:
        p = _probs(m, xin, device)
        acts = capture(m, xin[:spec.n_probe], batch_size=EVAL_BATCH)
        arrays = {"test_idx": idx.numpy(), "labels": yn, pred_key(): p,
                  **reduce_activations(acts, spec)}
        metrics = {"iid_acc": float((p.argmax(1) == yn).mean()),
                   "iid_nll": float(-np.log(np.clip(p[np.arange(len(yn)), yn], 1e-12, None)).mean())}
        results.append((metrics, arrays))
    for kind, sev in spec.shifts:
        xs = normalise(dataset, corrupt(x01, kind, sev, seed=spec.shift_seed))
        for m, (metrics, arrays) in zip(models, results):
            p = _probs(m, xs, device)
            arrays[pred_key(kind, sev)] = p
            metrics[f"acc:{kind}:{sev}"] = float((p.argmax(1) == yn).mean())
    for metrics, _ in results:
        ood = [v for k, v in metrics.items() if k.startswith("acc:")]
        if ood:
            metrics["ood_acc"] = float(np.mean(ood))
            metrics["ood_drop"] = metrics["iid_acc"] - metrics["ood_acc"]
    for m in models:
        m.cpu()
    return results
