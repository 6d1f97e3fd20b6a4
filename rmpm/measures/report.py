"""Exposing multiplicity (experiment 7, claim C4): a one-page report for any set of models.

    >>> R = multiplicity_report([model_a, model_b, model_c], x, y, layers=["fc"],
    ...                         class_names=classes, images=x_for_display)
    >>> R.summary            # PM measures with CIs, per-model accuracy, RM per layer
    >>> R.figure()           # one matplotlib figure
    >>> print(R.to_markdown())
    >>> R.save("report/")    # summary.csv, per_input.csv, confabulations.csv, figure.png,
    ...                      # report.md, manifest.json (written last)

It also takes a ``(models, inputs, classes)`` array of predicted probabilities
instead of models (then RM needs ``activations``). Nothing here knows about
rmpm's recipes or store: any ``nn.Module`` that maps ``x`` to logits works.

Definitions used
----------------
* An input is **disputed** when the models do not all predict the same class.
  (With the whole population as the Rashomon set this is Marx et al.'s ambiguity.)
* Inputs are ranked by how disputed they are: entropy of the models' vote first,
  then prediction variance (so among inputs with the same split of votes, the one
  where the models are more confident in their different answers comes first).
* A **confabulation** of model ``m`` on input ``x`` is a confident prediction,
  ``max_k p_m(k|x) >= confidence``, that the majority of the *other* models do not
  share: fewer than half of them predict the same class. With two models it is a
  confident prediction the other model contradicts. It can be right or wrong; the
  point is that this model is sure and its peers are not with it.
* Confidence intervals are percentile bootstraps over *inputs* (the models are the
  ones given; the question is how sure we are about them on data like ``x``), except
  RM, whose interval is over models (it needs >= 3 models).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import multiplicity as PM
from . import similarity as SIM
from . import stats
from .._checks import check_choice, check_range
from ..atomic import atomic_write, atomic_write_text

DEFAULT_CONFIDENCE = 0.9


# ----------------------------------------------------------------------------- per-input analyses

def disputed(probs) -> np.ndarray:
    """(N,) bool: the models do not all predict the same class on the input."""
    yhat = PM.predictions(probs)
    return (yhat != yhat[:1]).any(axis=0)


def dispute_order(probs) -> np.ndarray:
    """Input indices, most disputed first (vote entropy, then prediction variance,
    then index, all descending/ascending deterministically)."""
    h = PM.vote_entropy(probs, per_input=True)
    v = PM.prediction_variance(probs, per_input=True)
    # lexsort sorts by the last key first; index keeps the order deterministic
    return np.lexsort((np.arange(h.size), -np.round(v, 12), -np.round(h, 12)))


def confabulations(probs, confidence: float = DEFAULT_CONFIDENCE, labels=None) -> pd.DataFrame:
    """Every confabulation (see the module docstring): one row per (model, input).

    Columns: model, input, predicted, confidence, share_others (fraction of the
    other models predicting the same class), and with labels ``label``, ``correct``.
    Sorted by model, then by confidence (descending).
    """
    p = PM.as_probs(probs)
    check_range("confidence", confidence, 0.0, 1.0, lo_open=True)
    m, n, k = p.shape
    if m < 2:
        raise ValueError("confabulations need at least 2 models (a peer to disagree with)")
    yhat = p.argmax(axis=2)
    conf = p.max(axis=2)
    votes = PM.vote_counts(yhat, k)
    same_others = votes[np.arange(n)[None, :], yhat] - 1.0  # (M, N), excluding the model itself
    share = same_others / (m - 1)
    mask = (conf >= confidence) & (share < 0.5)
    mi, ni = np.nonzero(mask)
    frame = pd.DataFrame({"model": mi, "input": ni, "predicted": yhat[mi, ni],
                          "confidence": conf[mi, ni], "share_others": share[mi, ni]})
    if labels is not None:
        y = PM.check_labels(labels, n, k)
        frame["label"] = y[ni]
        frame["correct"] = frame["predicted"].to_numpy() == y[ni]
    return frame.sort_values(["model", "confidence", "input"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


def confabulation_counts(frame: pd.DataFrame, n_models: int) -> list[int]:
    """Number of confabulations of each model 0..n_models-1 (zeros included)."""
    counts = frame["model"].value_counts() if len(frame) else pd.Series(dtype=int)
    return [int(counts.get(i, 0)) for i in range(n_models)]


def per_input_table(probs, labels=None) -> pd.DataFrame:
    """One row per input: prediction variance, vote entropy, disputed flag, number of
    distinct predicted classes, majority class and its vote share (and label)."""
    p = PM.as_probs(probs)
    m, n, k = p.shape
    votes = PM.vote_counts(p.argmax(axis=2), k)
    out = pd.DataFrame({
        "input": np.arange(n),
        "prediction_variance": PM.prediction_variance(p, per_input=True),
        "vote_entropy": PM.vote_entropy(p, per_input=True),
        "disputed": disputed(p),
        "n_classes_predicted": (votes > 0).sum(axis=1),
        "majority": votes.argmax(axis=1),
        "majority_share": votes.max(axis=1) / m,
    })
    if labels is not None:
        out["label"] = PM.check_labels(labels, n, k)
    return out


# ----------------------------------------------------------------------------- model outputs

@torch.no_grad()
def predict_probs(models: Sequence[nn.Module], x, batch_size: int = 500,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax outputs of every model on ``x``, ``(models, inputs, classes)`` float64.

    Each model runs in eval mode on ``device`` and is returned to its original mode
    and device; ``x`` must already be what the models expect (normalised etc.).
    """
    check_range("batch_size", batch_size, 1, integer=True)
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    dev = torch.device(device)
    out = []
    for i, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{i}] is a {type(model).__name__}, not a torch nn.Module")
        was_training = model.training
        old = next(model.parameters()).device if any(True for _ in model.parameters()) else dev
        model.to(dev).eval()
        try:
            chunks = [torch.softmax(model(xt[j:j + batch_size].to(dev)).double(), dim=1).cpu()
                      for j in range(0, len(xt), batch_size)]
        finally:
            model.to(old).train(was_training)
        out.append(torch.cat(chunks).numpy())
    shapes = {o.shape for o in out}
    if len(shapes) != 1:
        raise ValueError(f"the models' outputs differ in shape: {sorted(shapes)}")
    return np.stack(out)


def capture_activations(models: Sequence[nn.Module], x, layers: Sequence[str], conv: str = "pool",
                        device: str | torch.device = "cpu") -> dict[str, list[np.ndarray]]:
    """``{layer: [(inputs, neurons) per model]}`` from forward hooks (conv maps reduced
    by ``conv``, as in :func:`rmpm.measures.similarity.flatten_conv`)."""
    from .activations import capture
    check_choice("conv", conv, SIM.CONV_MODES)
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for model in models:
        old = next(model.parameters()).device
        model.to(device)
        try:
            acts = capture(model, xt, layers)
        finally:
            model.to(old)
        for layer, a in acts.items():
            a2 = SIM.flatten_conv(a, conv, max_points=SIM.DEFAULT_MAX_POINTS) if a.dim() == 4 \
                else a.reshape(a.shape[0], -1)
            out[layer].append(np.asarray(a2, dtype=np.float32))
    return out


def _display_images(x, images, n: int) -> np.ndarray | None:
    """(N, H, W) or (N, H, W, C) floats in [0, 1] for plotting, or None."""
    src = images if images is not None else x
    if src is None:
        return None
    a = src.detach().cpu().numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
    if a.ndim != 4 or a.shape[0] != n:
        if images is not None:
            raise ValueError(f"images must have shape (N={n}, C, H, W) or (N, H, W, C); got {a.shape}")
        return None  # x is not image-shaped (e.g. tabular features): no thumbnails
    a = a.astype(np.float64)
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images is None:  # model inputs are normalised: rescale each image for display only
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
        a = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
    a = np.clip(a, 0.0, 1.0)
    return a[..., 0] if a.shape[-1] == 1 else a


def prediction_gallery(images, probs, indices, labels=None, class_names=None, model_names=None,
                       ncols: int = 6, axes=None, highlight=None, max_lines: int = 6):
    """Inputs with every model's prediction and confidence under each.

    ``images`` (N, H, W) or (N, H, W, C) in [0, 1] (None: blank tiles); ``probs``
    (models, N, classes); ``indices`` the inputs to show. ``highlight`` (optional
    list of model indices, one per shown input) prints that model's line in red,
    e.g. the model that confabulates. With more than ``max_lines`` models the
    vote count per class is shown instead of one line per model.
    """
    import matplotlib.pyplot as plt  # only when a figure is drawn
    p = np.asarray(probs)
    m = p.shape[0]
    idx = [int(i) for i in indices]
    names = class_names if class_names is not None else [str(c) for c in range(p.shape[2])]
    mnames = model_names if model_names is not None else [f"m{i}" for i in range(m)]
    n_lines = min(m, max_lines)
    line = 0.085  # height of one text line below a tile, in tile heights
    if axes is None:
        rows = max(1, -(-len(idx) // ncols))
        tile = 1.9  # inches
        below = tile * (0.06 + line * n_lines)  # text under each tile
        height = rows * (tile + below + 0.3) + 0.5
        fig, ax_grid = plt.subplots(rows, ncols, figsize=(2.0 * ncols, height), squeeze=False)
        # explicit spacing: tight_layout does not see text drawn below the axes
        fig.subplots_adjust(left=0.01, right=0.99, wspace=0.08, top=1 - 0.5 / height,
                            bottom=(below + 0.05) / height, hspace=(below + 0.3) / tile)
        axes = list(ax_grid.ravel())
        for ax in axes[len(idx):]:
            ax.axis("off")
    else:
        fig = axes[0].figure if len(axes) else None
    for j, (ax, i) in enumerate(zip(axes, idx)):
        if images is not None:
            img = images[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        head = f"#{i}" + (f"  true: {names[int(labels[i])]}" if labels is not None else "")
        ax.set_title(head, fontsize=7)
        yhat, conf = p[:, i].argmax(axis=1), p[:, i].max(axis=1)
        if m <= max_lines:
            lines = [(f"{mnames[k]}: {names[yhat[k]]} {conf[k]:.2f}",
                      highlight is not None and highlight[j] == k) for k in range(m)]
        else:
            counts = np.bincount(yhat, minlength=p.shape[2])
            order = np.argsort(-counts)[:max_lines]
            lines = [(f"{names[c]}: {counts[c]}/{m}", False) for c in order if counts[c]]
        for r, (text, hot) in enumerate(lines):
            ax.text(0.5, -0.04 - line * r, text, transform=ax.transAxes, ha="center", va="top",
                    fontsize=6.5, color="tab:red" if hot else "k")
    return fig


# ----------------------------------------------------------------------------- the report

@dataclass
class Report:
    """A multiplicity report; build it with :func:`multiplicity_report`."""

    title: str
    probs: np.ndarray = field(repr=False)
    labels: np.ndarray | None = field(repr=False)
    images: np.ndarray | None = field(repr=False)
    class_names: list[str]
    model_names: list[str]
    summary: pd.DataFrame = field(repr=False)
    per_input: pd.DataFrame = field(repr=False)
    confabulations: pd.DataFrame = field(repr=False)
    similarities: dict[str, np.ndarray] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_models(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_inputs(self) -> int:
        return int(self.probs.shape[1])

    def value(self, measure: str) -> float:
        """The estimate of one row of :attr:`summary` (e.g. ``"frac_disputed"``)."""
        row = self.summary[self.summary["measure"] == measure]
        if row.empty:
            raise KeyError(f"no measure {measure!r}; measures: {', '.join(self.summary['measure'])}")
        return float(row["estimate"].iloc[0])

    def most_disputed(self, k: int | None = None) -> np.ndarray:
        """Indices of the disputed inputs, most disputed first (at most ``k``)."""
        order = dispute_order(self.probs)
        order = order[self.per_input["disputed"].to_numpy()[order]]
        return order if k is None else order[:k]

    def confabulation_counts(self) -> list[int]:
        return confabulation_counts(self.confabulations, self.n_models)

    # -- outputs --------------------------------------------------------
    def figure(self, top_k: int | None = None):
        """One figure: accuracy per model, disagreement matrix, per-input PM
        histogram, and the most disputed inputs with every model's prediction."""
        import matplotlib.pyplot as plt
        k = self.settings.get("top_k", 8) if top_k is None else top_k
        check_range("top_k", k, 0, integer=True)
        show = self.most_disputed(k)
        fig = plt.figure(figsize=(13, 7.4 if len(show) else 3.6))
        outer = fig.add_gridspec(2 if len(show) else 1, 1,
                                 height_ratios=[1, 0.95] if len(show) else [1], hspace=0.3)
        top = outer[0].subgridspec(1, 3, wspace=0.45)
        ax_acc, ax_dis, ax_hist = (fig.add_subplot(top[0, j]) for j in range(3))
        self._draw_accuracy(ax_acc)
        self._draw_disagreement(fig, ax_dis)
        self._draw_histogram(ax_hist)
        if len(show):
            bottom = outer[1].subgridspec(1, max(len(show), 6), wspace=0.15)
            axes = [fig.add_subplot(bottom[0, j]) for j in range(len(show))]
            prediction_gallery(self.images, self.probs, show, self.labels, self.class_names,
                                     self.model_names, axes=axes)
            axes[0].annotate(f"most disputed of {self.n_inputs} inputs "
                             f"({int(self.per_input['disputed'].sum())} disputed)",
                             (0, 1.22), xycoords="axes fraction", fontsize=10, weight="bold")
        fig.suptitle(f"{self.title}: {self.n_models} models, {self.n_inputs} inputs",
                     fontsize=12, y=0.99)
        return fig

    def _draw_accuracy(self, ax) -> None:
        acc = self.summary[self.summary["group"] == "accuracy"]
        x = np.arange(self.n_models)
        if acc.empty:
            # no labels: show how often each model agrees with the majority instead
            maj = self.per_input["majority"].to_numpy()
            agree = (self.probs.argmax(axis=2) == maj[None]).mean(axis=1)
            ax.bar(x, agree, color="tab:gray")
            ax.set_ylabel("agreement with majority vote")
            lo = agree.min()
        else:
            est = acc["estimate"].to_numpy()
            err = np.vstack([est - acc["low"].to_numpy(), acc["high"].to_numpy() - est])
            ax.bar(x, est, yerr=err, capsize=3, color="tab:blue")
            ax.set_ylabel("accuracy (95% CI over inputs)")
            lo = acc["low"].min()
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_xticks(x)
        ax.set_xticklabels(self.model_names, rotation=45, ha="right", fontsize=7)
        ax.set_title("accuracy per model", fontsize=10)
        ax.grid(axis="y", alpha=0.3)

    def _draw_disagreement(self, fig, ax) -> None:
        d = PM.disagreement_matrix(self.probs)
        im = ax.imshow(d, cmap="magma_r", vmin=0.0)
        ax.set_xticks(range(self.n_models))
        ax.set_yticks(range(self.n_models))
        ax.set_xticklabels(self.model_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticklabels(self.model_names, fontsize=7)
        if self.n_models <= 10:  # numbers stay readable up to about ten models
            for i in range(self.n_models):
                for j in range(self.n_models):
                    ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="w" if d[i, j] > 0.6 * max(d.max(), 1e-12) else "k")
        ax.set_title("disagreement (fraction of inputs)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    def _draw_histogram(self, ax) -> None:
        v = self.per_input["prediction_variance"].to_numpy()
        ax.hist(v, bins=40, log=True, color="tab:purple")
        ax.set_xlabel("prediction variance of one input")
        ax.set_ylabel("inputs (log scale)")
        ax.set_title("PM per input", fontsize=10)
        ax.grid(alpha=0.3)

    def to_markdown(self, figure_path: str | None = None) -> str:
        """The report as Markdown (tables plus, if given, a link to the figure)."""
        s = self.settings
        lines = [f"# {self.title}", "",
                 f"{self.n_models} models, {self.n_inputs} inputs, {self.probs.shape[2]} classes. "
                 f"Intervals: {int(s.get('level', 0.95) * 100)}% percentile bootstrap "
                 f"({s.get('n_boot')} resamples) over inputs, and over models for RM. "
                 f"Confabulation: confidence >= {s.get('confidence')} and fewer than half of "
                 "the other models predict the same class.", ""]
        if figure_path:
            lines += [f"![{self.title}]({figure_path})", ""]
        for group, heading in (("PM", "Predictive multiplicity"), ("accuracy", "Accuracy per model"),
                               ("RM", "Representational multiplicity (1 - SVCCA)")):
            part = self.summary[self.summary["group"] == group]
            if part.empty:
                continue
            lines += [f"## {heading}", "", _md_table(part[["measure", "estimate", "low", "high",
                                                            "description"]]), ""]
        counts = self.confabulation_counts()
        conf_rows = pd.DataFrame({"model": self.model_names, "confabulations": counts})
        if "correct" in self.confabulations and len(self.confabulations):
            wrong = self.confabulations[~self.confabulations["correct"]]["model"].value_counts()
            conf_rows["of which wrong"] = [int(wrong.get(i, 0)) for i in range(self.n_models)]
        lines += ["## Confabulations per model", "", _md_table(conf_rows), ""]
        top = self.most_disputed(self.settings.get("top_k", 8))
        if len(top):
            rows = []
            yhat = self.probs.argmax(axis=2)
            for i in top:
                votes = pd.Series([self.class_names[c] for c in yhat[:, i]]).value_counts()
                rows.append({"input": int(i),
                             "label": self.class_names[self.labels[i]] if self.labels is not None else "",
                             "votes": ", ".join(f"{c} x{v}" for c, v in votes.items()),
                             "prediction variance": float(self.per_input["prediction_variance"].iloc[i])})
            lines += ["## Most disputed inputs", "", _md_table(pd.DataFrame(rows)), ""]
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike, dpi: int = 120) -> dict[str, Path]:
        """Write the report's files into ``folder`` and return their paths.

        Every file is written to a temporary name and renamed into place (atomic on
        POSIX), and ``manifest.json`` (file names, sizes, SHA-256) is written last,
        so a reader that finds a manifest whose hashes match has a complete report.
        """
        import matplotlib.pyplot as plt
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stale = out / "manifest.json"
        if stale.exists():
            stale.unlink()  # an old manifest must not vouch for a half-written new report
        paths: dict[str, Path] = {}
        paths["summary"] = atomic_write_text(out / "summary.csv", self.summary.to_csv(index=False))
        paths["per_input"] = atomic_write_text(out / "per_input.csv", self.per_input.to_csv(index=False))
        paths["confabulations"] = atomic_write_text(out / "confabulations.csv",
                                               self.confabulations.to_csv(index=False))
        fig = self.figure()
        try:
            paths["figure"] = atomic_write(out / "figure.png",
                                            lambda f: fig.savefig(f, dpi=dpi, format="png",
                                                                  bbox_inches="tight"))
        finally:
            plt.close(fig)
        paths["markdown"] = atomic_write_text(out / "report.md", self.to_markdown("figure.png"))
        manifest = {"title": self.title, "n_models": self.n_models, "n_inputs": self.n_inputs,
                    "model_names": self.model_names, "settings": _jsonable(self.settings),
                    "files": {p.name: {"bytes": p.stat().st_size,
                                       "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                              for p in paths.values()}}
        paths["manifest"] = atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
        return paths


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in d.items()}


def _md_table(frame: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")
    cols = list(frame.columns)
    rows = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(rows)


def _pm_rows(p: np.ndarray, y, confidence: float, n_boot: int, level: float, seed: int) -> list[dict]:
    m, n, _ = p.shape
    rows = []

    def add(measure, ci, description, over="inputs"):
        rows.append({"group": "PM", "measure": measure, "estimate": ci.estimate, "low": ci.low,
                     "high": ci.high, "ci_over": over, "description": description})

    def mean_ci(v):
        if n < 2:
            return stats.CI(float(np.mean(v)), np.nan, np.nan, level, 0)
        return stats.bootstrap_ci(np.mean, v, n_boot=n_boot, level=level, seed=seed)

    yhat = p.argmax(axis=2)
    add("prediction_variance", mean_ci(PM.prediction_variance(p, per_input=True)),
        "PM (our reading of the abstract's 'variance of predictions'): variance across "
        "models of the predicted probabilities, "
        "mean over inputs and classes")
    if m > 1:
        # per-input churn: fraction of ordered pairs of distinct models that disagree
        same = (yhat[:, None, :] == yhat[None, :, :]).sum(axis=(0, 1))  # includes i == j
        per_pair = 1.0 - (same - m) / (m * (m - 1))
        add("mean_disagreement", mean_ci(per_pair), "fraction of inputs on which two models "
            "disagree, mean over pairs (churn)")
    add("frac_disputed", mean_ci(disputed(p).astype(float)),
        "fraction of inputs on which the models do not all agree (= ambiguity with every "
        "model in the Rashomon set)")
    if m > 1 and n > 1:
        ind = (yhat != yhat[0][None]).T.astype(float)  # (N, M): disagrees with model 0
        add("discrepancy", stats.bootstrap_ci(lambda a: a.mean(axis=0).max(), ind, over=0,
                                              n_boot=n_boot, level=level, seed=seed),
            "largest fraction of inputs on which one model disagrees with the first model "
            "(Marx et al. 2020)")
    add("vote_entropy", mean_ci(PM.vote_entropy(p, per_input=True)),
        "entropy of the models' vote (nats), mean over inputs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rc = PM.rashomon_capacity(p)
    add("rashomon_capacity", mean_ci(rc), "Rashomon capacity (Hsu & Calmon 2022), mean over "
        "inputs; 1 = all models give the same distribution")
    if m > 1:
        conf = confabulations(p, confidence)
        per_input = np.bincount(conf["input"].to_numpy(), minlength=n) / m
        add("confabulation_rate", mean_ci(per_input),
            f"confabulations (confidence >= {confidence}, not shared by the majority of the "
            "other models) per model and input")
    if y is not None:
        ens = (p.mean(axis=0).argmax(axis=1) == y).astype(float)
        rows.append({"group": "PM", "measure": "ensemble_accuracy", **stats.ci_dict(mean_ci(ens)),
                     "ci_over": "inputs", "description": "accuracy of the averaged probabilities"})
    return rows


def _accuracy_rows(probs: np.ndarray, labels: np.ndarray, mnames: Sequence[str], n_boot: int,
                   level: float, seed: int) -> list[dict[str, Any]]:
    """One summary row per model: its accuracy with a bootstrap interval over inputs."""
    rows = []
    n = probs.shape[1]
    for i, correct in enumerate(probs.argmax(axis=2) == labels[None]):
        ci = stats.bootstrap_ci(np.mean, correct.astype(float), n_boot=n_boot, level=level,
                                seed=seed) if n > 1 else stats.CI(float(correct.mean()), np.nan, np.nan)
        rows.append({"group": "accuracy", "measure": f"accuracy[{mnames[i]}]", **stats.ci_dict(ci),
                     "ci_over": "inputs", "description": f"test accuracy of {mnames[i]}"})
    return rows


def _rm_rows(activations: Mapping[str, Sequence[Any]], m: int, keep, conv: str, n_boot: int,
             level: float, seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """SVCCA similarity matrices per layer and the summary rows of RM: per layer (with
    a bootstrap interval over models when there are 3 or more) and their mean."""
    sims, rows = {}, []
    for layer, acts in activations.items():
        if len(acts) != m:
            raise ValueError(f"activations[{layer!r}] has {len(acts)} models; expected {m}")
        sims[layer] = SIM.pairwise_similarity(list(acts), "svcca", keep, conv=conv)
    for layer, s in sims.items():
        if m >= 3:
            with warnings.catch_warnings():
                # with few models some resamples draw one model only (no pair): dropped
                warnings.simplefilter("ignore", RuntimeWarning)
                ci = stats.bootstrap_rm(s, n_boot=n_boot, level=level, seed=seed)
        else:
            ci = stats.CI(SIM.representational_multiplicity(s), np.nan, np.nan)
        rows.append({"group": "RM", "measure": f"rm[{layer}]", **stats.ci_dict(ci),
                     "ci_over": "models" if m >= 3 else "",
                     "description": f"1 - SVCCA at {layer}, mean over model pairs"})
    rows.append({"group": "RM", "measure": "rm", "estimate": SIM.representational_multiplicity(sims),
                 "low": np.nan, "high": np.nan, "ci_over": "",
                 "description": "mean of the per-layer RM"})
    return sims, rows


def multiplicity_report(models: Sequence[nn.Module] | np.ndarray | torch.Tensor, x=None, y=None,
                        layers: Sequence[str] | None = None,
                        class_names: Sequence[str] | None = None, *,
                        model_names: Sequence[str] | None = None, images=None,
                        activations: Mapping[str, Sequence[Any]] | None = None,
                        confidence: float = DEFAULT_CONFIDENCE, n_probe: int = 1000,
                        conv: str = "pool", keep=0.99, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0, top_k: int = 8, batch_size: int = 500,
                        device: str | torch.device = "cpu",
                        title: str = "Multiplicity report") -> Report:
    """Measure and expose the multiplicity of a set of models on inputs ``x``.

    ``models``: a sequence of ``nn.Module`` (each maps a batch of ``x`` to logits), or
    an array ``(models, inputs, classes)`` of predicted probabilities (then ``x`` is
    only used for thumbnails and may be None). ``y``: labels (optional; gives
    per-model accuracy and marks confabulations right or wrong). ``layers``: module
    names whose activations on the first ``n_probe`` inputs give RM per layer
    (needs models; conv maps reduced by ``conv``). ``activations``:
    ``{layer: [array (inputs, neurons) per model]}`` instead of ``layers``.
    ``images``: what to show for each input (default: ``x`` rescaled per image).
    """
    check_range("confidence", confidence, 0.0, 1.0, lo_open=True)
    check_range("n_probe", n_probe, 2, integer=True)
    check_range("top_k", top_k, 0, integer=True)
    check_choice("conv", conv, SIM.CONV_MODES)
    if isinstance(models, (np.ndarray, torch.Tensor)):
        probs = PM.as_probs(models, "models (probabilities)")
        given_models = None
        if layers is not None:
            raise ValueError("layers needs models to probe; with a probability array pass "
                             "activations={layer: [array per model]} instead")
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)) and len(models) > 0:
        if x is None:
            raise ValueError("x (the inputs to run the models on) is required with models")
        given_models = list(models)
        probs = PM.as_probs(predict_probs(given_models, x, batch_size, device))
    else:
        raise TypeError("models must be a non-empty sequence of torch nn.Module or a "
                        "(models, inputs, classes) probability array")
    m, n, k = probs.shape
    if m < 2:
        raise ValueError(f"a multiplicity report needs at least 2 models; got {m}")
    labels = None if y is None else PM.check_labels(y, n, k, name="y")
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) < k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    mnames = [f"m{i}" for i in range(m)] if model_names is None else [str(s) for s in model_names]
    if len(mnames) != m:
        raise ValueError(f"model_names has {len(mnames)} names for {m} models")
    if activations is not None and layers is not None:
        raise ValueError("give layers (to probe the models) or activations, not both")

    rows = _pm_rows(probs, labels, confidence, n_boot, level, seed)
    if labels is not None:
        rows += _accuracy_rows(probs, labels, mnames, n_boot, level, seed)
    sims: dict[str, np.ndarray] = {}
    if layers is not None:
        xs = x[:min(n_probe, n)]
        activations = capture_activations(given_models, xs, list(layers), conv, device)
    if activations is not None:
        sims, rm_rows = _rm_rows(activations, m, keep, conv, n_boot, level, seed)
        rows += rm_rows

    summary = pd.DataFrame(rows, columns=["group", "measure", "estimate", "low", "high", "ci_over",
                                          "description"])
    return Report(title=title, probs=probs, labels=labels, images=_display_images(x, images, n),
                  class_names=names, model_names=mnames, summary=summary,
                  per_input=per_input_table(probs, labels),
                  confabulations=confabulations(probs, confidence, labels), similarities=sims,
                  settings={"confidence": confidence, "n_boot": n_boot, "level": level,
                            "seed": seed, "keep": keep, "conv": conv, "top_k": top_k,
                            "n_probe": min(n_probe, n) if sims else None})


__all__ = ["Report", "multiplicity_report", "disputed", "dispute_order", "confabulations",
           "confabulation_counts", "per_input_table", "predict_probs", "capture_activations"]
