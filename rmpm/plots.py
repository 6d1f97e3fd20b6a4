"""Figures shared by the notebooks (matplotlib; every function returns its Figure)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np


def learning_curves(histories: Sequence[Sequence[Mapping[str, float]]], labels: Sequence[str],
                    keys: Sequence[str] = ("train_loss", "test_acc_sample")):
    """One panel per history key, one line per model."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for h, lab in zip(histories, labels):
            ax.plot([e["epoch"] for e in h], [e[key] for e in h], marker="o", ms=3, label=lab)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def similarity_heatmaps(sims: Mapping[str, np.ndarray], labels: Sequence[str] | None = None,
                        title: str = "SVCCA similarity", vmin: float | None = None):
    """One N×N heatmap per layer, on a shared colour scale."""
    layers = list(sims)
    fig, axes = plt.subplots(1, len(layers), figsize=(2.9 * len(layers) + 0.8, 3.0),
                             squeeze=False)
    lo = vmin if vmin is not None else min(float(np.nanmin(s)) for s in sims.values())
    im = None
    for ax, layer in zip(axes[0], layers):
        im = ax.imshow(sims[layer], vmin=lo, vmax=1.0, cmap="viridis")
        ax.set_title(layer, fontsize=9)
        n = len(sims[layer])
        ticks = range(n)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        if labels is not None:
            ax.set_xticklabels(labels, rotation=90, fontsize=6)
            ax.set_yticklabels(labels, fontsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=title)
    return fig


def layer_profile(layers: Sequence[str], series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                  ylabel: str = "RM = 1 - SVCCA"):
    """Lines over layers with CI bands: ``series[name] = (estimate, low, high)`` per layer."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(layers))
    for name, (est, lo, hi) in series.items():
        ax.plot(x, est, marker="o", ms=3, label=name)
        ax.fill_between(x, lo, hi, alpha=0.15)
    ax.set_xticks(x)
    ax.set_xticklabels(layers)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
