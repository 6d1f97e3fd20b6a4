"""Figures shared by the notebooks (matplotlib; every function returns its Figure)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.evidence import ALPHA


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


def accuracy_spread(populations, reference=None, floors: Mapping[str, float] | None = None):
    """Test accuracy of every factor population (rows: factors; a line from the lowest
    to the highest model, a dot at the mean), one panel per data set; the reference
    population's range as a grey band and the profile's floor as a dashed line.
    ``populations``: :func:`rmpm.analysis.populations.population_accuracy`; ``reference``:
    the summary of :func:`rmpm.analysis.populations.reference_accuracy`."""
    datasets = list(dict.fromkeys(populations["dataset"]))
    factors = list(dict.fromkeys(populations["factor"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets) + 1.4,
                                                        0.3 * len(factors) + 1.3),
                             squeeze=False, sharey=True)
    colours = factor_colours(factors)
    y = {f: i for i, f in enumerate(reversed(factors))}
    for ax, ds in zip(axes[0], datasets):
        t = populations[populations["dataset"] == ds]
        if reference is not None and ds in reference.index:
            ax.axvspan(reference.loc[ds, "min"], reference.loc[ds, "max"], color="0.85",
                       label="reference population")
        if floors and ds in floors:
            ax.axvline(floors[ds], color="tab:red", ls="--", lw=1, label="accuracy floor")
        for _, r in t.iterrows():
            yi = y[r["factor"]]
            ax.plot([r["min"], r["max"]], [yi, yi], color=colours[r["factor"]], lw=2)
            ax.plot(r["test_acc"], yi, "o", color=colours[r["factor"]], ms=4)
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel("test accuracy")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(list(y.values()))
    axes[0][0].set_yticklabels(list(y.keys()), fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def training_fit(populations):
    """Training against test accuracy of every population (one dot per population and
    replicate), one panel per data set; the reference population as a black star, the
    populations flagged as not equally good on training data circled in red.
    ``populations``: the per-population table of
    :func:`rmpm.analysis.populations.training_fit`."""
    datasets = list(dict.fromkeys(populations["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets) + 0.6, 3.4),
                             squeeze=False)
    colours = factor_colours([f for f in dict.fromkeys(populations["population"])
                              if f != "reference"])
    for ax, ds in zip(axes[0], datasets):
        t = populations[populations["dataset"] == ds]
        for _, r in t.iterrows():
            if r["population"] == "reference":
                ax.plot(r["train_acc"], r["test_acc"], "*", color="black", ms=11,
                        label="reference", zorder=3)
                continue
            ax.plot(r["train_acc"], r["test_acc"], "o", color=colours[r["population"]], ms=4)
            if r["flag"]:
                ax.plot(r["train_acc"], r["test_acc"], "o", mfc="none", mec="tab:red", ms=9,
                        label="flagged")
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel("training accuracy")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        keep = dict(zip(labels, handles))
        ax.legend(keep.values(), keep.keys(), fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("test accuracy")
    fig.tight_layout()
    return fig


def regime_contrasts(contrasts):
    """C1's contrasts (a factor's chance-adjusted RM minus a fresh seed's) in two regimes
    against each other, one dot per factor, with the diagonal where they would agree;
    with one regime's column only, that regime's contrasts by factor.
    ``contrasts``: :attr:`rmpm.analysis.regimes.Comparison.contrasts` (columns: regimes)."""
    cols = list(contrasts.columns)
    colours = factor_colours(list(contrasts.index))
    if len(cols) < 2 or contrasts[cols[1]].isna().all():
        fig, ax = plt.subplots(figsize=(5.5, 0.3 * len(contrasts) + 1.2))
        col = cols[0]
        t = contrasts[col].dropna().sort_values()
        ax.barh(range(len(t)), t.to_numpy(), color=[colours[f] for f in t.index])
        ax.set_yticks(range(len(t)))
        ax.set_yticklabels(list(t.index), fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"C1 contrast with a fresh seed ({col})")
        ax.set_title("the other regime is not built", fontsize=9)
        fig.tight_layout()
        return fig
    a, b = cols[:2]
    t = contrasts[[a, b]].dropna()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    lo = float(min(t.min().min(), 0.0))
    hi = float(max(t.max().max(), 0.0))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    for f, r in t.iterrows():
        ax.plot(r[a], r[b], "o", color=colours[f], ms=6)
        ax.annotate(f, (r[a], r[b]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"C1 contrast with a fresh seed, {a}")
    ax.set_ylabel(f"C1 contrast with a fresh seed, {b}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# -- finite samples and exposing multiplicity (chapters 06 and 07) ------------

def estimate_vs_n(frames: Mapping[str, "object"], full: Mapping[str, float] | None = None,
                  tolerance: float | None = None, xlabel: str = "number of inputs",
                  ylabel: str = "estimate", null: Mapping[str, "object"] | None = None):
    """Estimate with CI band against sample size, one panel per entry of ``frames``
    (DataFrames with columns n, estimate, low, high). ``full[name]`` draws the
    full-sample value with a ``±tolerance`` (relative) band; ``null[name]``
    (columns n, value) draws what unrelated models would give."""
    names = list(frames)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        f = frames[name]
        ax.plot(f["n"], f["estimate"], marker="o", ms=3, color="tab:blue", label="estimate")
        ax.fill_between(f["n"], f["low"], f["high"], alpha=0.2, color="tab:blue",
                        label="95% CI over inputs")
        if full is not None and name in full:
            v = full[name]
            ax.axhline(v, color="k", lw=0.8, label="full sample")
            if tolerance:
                ax.axhspan(v * (1 - tolerance), v * (1 + tolerance), color="k", alpha=0.07,
                           label=f"±{tolerance:.0%}")
        if null is not None and name in null:
            g = null[name]
            ax.plot(g["n"], g["value"], ls="--", color="tab:red", label="unrelated models")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if len(names) == 1 else f"{name}")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def labelled_scatter(frame, x: str, y: str, label: str | None = None, hue: str | None = None,
                     title: str | None = None, ax=None):
    """Scatter of two columns of ``frame``; ``label`` annotates each point, ``hue``
    colours by a categorical column (e.g. data set)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
    else:
        fig = ax.figure
    groups = [(None, frame)] if hue is None else list(frame.groupby(hue, sort=False))
    for g, part in groups:
        ax.scatter(part[x], part[y], s=22, alpha=0.8, label=None if g is None else str(g))
        if label is not None:
            for _, r in part.iterrows():
                ax.annotate(str(r[label]), (r[x], r[y]), fontsize=6, alpha=0.7,
                            xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=10)
    if hue is not None:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


# -- RM by factor, PM under shift, RM vs PM (chapters 03-05) ------------------

#: colour of each factor group in the chapters 03-05 figures
GROUP_COLOURS = {"seeds": "tab:blue", "data": "tab:green", "hyperparameters": "tab:orange"}


def factor_colours(factors: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per factor (by its place in ``rmpm.pipeline.recipe.FACTORS``), so a
    factor has the same colour in every chapter whatever subset is shown."""
    from ..pipeline.recipe import FACTORS
    order = list(FACTORS)
    cmap = plt.get_cmap("tab20")
    return {f: cmap((order.index(f) if f in order else len(order)) % 20) for f in factors}


def interval_chart(ci, xlabel: str = "RM = 1 - SVCCA (mean over layers)", title: str | None = None):
    """Horizontal point-and-interval chart, one row per factor in the given order
    (first on top); ``ci`` has columns estimate, low, high and optionally group."""
    names = list(ci.index)
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    groups = ci["group"] if "group" in ci else ["factor"] * len(names)
    seen = set()
    for yi, name, g in zip(y, names, groups):
        c = GROUP_COLOURS.get(g, "tab:gray")
        row = ci.loc[name]
        ax.errorbar(row["estimate"], yi, xerr=[[row["estimate"] - row["low"]],
                                                [row["high"] - row["estimate"]]],
                    fmt="o", color=c, ms=5, capsize=3, label=None if g in seen else g)
        seen.add(g)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def layer_lines(frames: Mapping[str, "object"], ylabel: str = "RM = 1 - SVCCA"):
    """One panel per data set; per factor RM over layers with interval bars.
    ``frames[dataset]`` is long: factor, layer, estimate, low, high."""
    names = list(frames)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names) + 1.6, 3.6),
                             squeeze=False)
    for ax, ds in zip(axes[0], names):
        f = frames[ds]
        layers = list(dict.fromkeys(f["layer"]))
        factors = list(dict.fromkeys(f["factor"]))
        colours = factor_colours(factors)
        x = np.arange(len(layers))
        for j, fac in enumerate(factors):
            g = f[f["factor"] == fac].set_index("layer").loc[layers]
            dx = (j - (len(factors) - 1) / 2) * 0.02  # small dodge so bars don't overlap
            ax.errorbar(x + dx, g["estimate"], yerr=[g["estimate"] - g["low"], g["high"] - g["estimate"]],
                        marker="o", ms=3, lw=1, capsize=2, color=colours[fac], label=fac)
        ax.set_xticks(x)
        ax.set_xticklabels(layers, fontsize=8)
        ax.set_title(ds, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def rank_heatmap(ranks, title: str = "rank of the factor's RM within the block (1 = largest)"):
    """Blocks (rows) x factors (columns) heatmap of ranks, annotated."""
    a = np.asarray(ranks, dtype=float)
    fig, ax = plt.subplots(figsize=(0.55 * a.shape[1] + 2.2, 0.35 * a.shape[0] + 1.8))
    im = ax.imshow(a, cmap="viridis_r", aspect="auto", vmin=1, vmax=a.shape[1])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, f"{a[i, j]:g}", ha="center", va="center", fontsize=7,
                    color="k" if a[i, j] < a.shape[1] / 2 else "w")  # dark text on light cells
    ax.set_xticks(range(a.shape[1]))
    ax.set_xticklabels([str(c) for c in ranks.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(a.shape[0]))
    ax.set_yticklabels([" / ".join(map(str, i)) if isinstance(i, tuple) else str(i)
                        for i in ranks.index], fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="rank")
    return fig


def severity_lines(curves, by: str | None = None, ylabel: str = "PM (prediction variance)",
                   ax=None, legend_out: bool = True):
    """Mean PM against severity (0 = i.i.d.) with interval bands, one line per
    value of ``by`` (a column of ``curves``: severity, estimate, low, high)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
    else:
        fig = ax.figure
    groups = [(None, curves)] if by is None else list(curves.groupby(by, sort=False))
    colours = factor_colours([g for g, _ in groups]) if by == "factor" else {}
    for g, t in groups:
        t = t.sort_values("severity")
        kw = {"color": colours[g]} if g in colours else {}
        line, = ax.plot(t["severity"], t["estimate"], marker="o", ms=3,
                        label="all" if g is None else str(g), **kw)
        ax.fill_between(t["severity"], t["low"], t["high"], alpha=0.12, color=line.get_color())
    ax.set_xlabel("severity (0 = i.i.d. test set)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(curves["severity"].unique()))
    ax.grid(alpha=0.3)
    if legend_out:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def scatter_by_factor(table, x: str, ys: Mapping[str, str], xlabel: str | None = None):
    """One panel per ``ys`` entry (title -> column): ``x`` against it, one point
    per population, colour per factor, marker per data set."""
    names = list(ys)
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names) + 1.8, 3.8), squeeze=False)
    factors = list(dict.fromkeys(table["factor"]))
    colours = factor_colours(factors)
    markers = dict(zip(dict.fromkeys(table["dataset"]), "osD^v<>"))
    for ax, name in zip(axes[0], names):
        for (ds, fac), t in table.groupby(["dataset", "factor"], sort=False):
            ax.scatter(t[x], t[ys[name]], color=colours[fac], marker=markers[ds], s=28,
                       edgecolor="k", linewidth=0.3,
                       label=fac if len(markers) == 1 else f"{fac} ({ds})")
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ys[name])
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    axes[0][-1].legend(by_label.values(), by_label.keys(), fontsize=6.5, loc="center left",
                       bbox_to_anchor=(1.01, 0.5), ncol=1 if len(by_label) <= 14 else 2)
    fig.tight_layout()
    return fig


def claim_tests(tests, alpha: float = ALPHA):
    """The tests behind the verdicts (:func:`rmpm.analysis.verdicts.tests_table`): left, each
    estimate with its interval and the value it is tested against (|: null or
    threshold); right, its p-value (log scale) against alpha (solid) and the
    stricter level "partly" needs when a claim has several tests (dotted)."""
    t = tests.reset_index(drop=True)
    n = len(t)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.45 * n + 1.4), sharey=True,
                                 gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(n)[::-1]
    claims = list(dict.fromkeys(t["claim"]))
    colours = {c: plt.cm.tab10(i) for i, c in enumerate(claims)}
    for yi, (_, r) in zip(y, t.iterrows()):
        col = colours[r["claim"]]
        if r["estimate"] is not None and np.isfinite(r["estimate"]):
            a1.plot([r["estimate"]], [yi], "o", color=col)
            if r["low"] is not None and np.isfinite(r["low"]):
                a1.plot([r["low"], r["high"]], [yi, yi], "-", color=col, lw=2)
        if r["null_value"] is not None and np.isfinite(r["null_value"]):
            a1.plot([r["null_value"]], [yi], "|", color="k", ms=14, mew=2)
        if r["p_value"] is not None and np.isfinite(r["p_value"]):
            a2.plot([r["p_value"]], [yi], "o", color=col)
        a2.plot([r["partly_below"]] * 2, [yi - 0.35, yi + 0.35], ":", color="grey")
    a2.axvline(alpha, color="k", lw=1)
    a1.set_yticks(y)
    a1.set_yticklabels([f"{r.claim}: {r.test}" for r in t.itertuples()], fontsize=8)
    a1.set_xlabel("estimate (RM contrast, ρ, or share of inputs)")
    a1.grid(alpha=0.3)
    a2.set_xscale("log")
    a2.set_xlabel(f"p-value (solid: alpha = {alpha:g})")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_chart(cal, alpha: float = ALPHA):
    """Rate at which each verdict level is reached under each simulated scenario
    (:func:`rmpm.analysis.calibration.calibrate`): false-positive rates under the nulls
    (must stay left of alpha, the dashed line), each null of the family labelled
    by its noise model, and power under the alternative, with +-2 standard errors."""
    levels = list(dict.fromkeys(cal["level"]))
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 0.35 * len(cal) / len(levels) + 1.4),
                             sharey=True, squeeze=False)
    for ax, level in zip(axes[0], levels):
        t = cal[cal["level"] == level].reset_index(drop=True)
        y = np.arange(len(t))[::-1]
        null = t["hypothesis"] != "alternative"
        ax.errorbar(t["rate"], y, xerr=2 * t["se"], fmt="none", ecolor="grey", lw=1)
        ax.plot(t.loc[null, "rate"], y[null.to_numpy()], "o", color="#c44e52", label="under a null")
        ax.plot(t.loc[~null, "rate"], y[~null.to_numpy()], "o", color="#4c72b0",
                label="under the alternative (power)")
        ax.axvline(alpha, color="k", ls="--", lw=1)
        ax.set_xlim(-0.03, 1.03)
        ax.set_title(level, fontsize=9)
        ax.set_xlabel("rate over simulations")
        ax.grid(alpha=0.3)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.claim} {r.hypothesis}" + (f" ({r.noise})" if "noise" in t else "")
                            for r in t.itertuples()], fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
