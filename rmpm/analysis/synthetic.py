"""Synthetic data with known answers, for checking the similarity measures
(chapter 1): Gaussian layers with a chosen spectrum, maps every measure should be
invariant to, independent layers (SVCCA's small-sample floor), and activations of
small random CNNs, so that the conv-layer conventions are seen on real feature
maps without training anything."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._checks import check_range
from ..measures import similarity as SIM
from ..measures import stats


class RandomCNN(nn.Module):
    """Two 3x3 conv layers and a hidden dense layer; ``forward`` returns every
    layer's ReLU output, ``{"conv1", "conv2", "fc"}``, for 32x32 one-channel inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h1 = torch.relu(self.c1(x))
        h2 = torch.relu(self.c2(torch.max_pool2d(h1, 2)))
        h3 = torch.relu(self.fc(torch.max_pool2d(h2, 2).flatten(1)))
        return {"conv1": h1, "conv2": h2, "fc": h3}


@torch.no_grad()
def random_cnn_activations(n_inputs: int, n_models: int, seed: int = 0
                           ) -> dict[str, list[torch.Tensor]]:
    """Activations of ``n_models`` randomly initialised :class:`RandomCNN` on the same
    ``n_inputs`` smooth random images (uniform noise, 5x5 box-blurred, standardised):
    layer -> one ``(n_inputs, ...)`` tensor per model. Model ``m`` is initialised
    from ``torch.manual_seed(seed * 1000 + m)``; the images come from their own
    generator seeded with ``seed``.
    """
    check_range("n_inputs", n_inputs, 2, integer=True)
    check_range("n_models", n_models, 1, integer=True)
    check_range("seed", seed, 0, integer=True)
    gen = torch.Generator().manual_seed(seed)
    images = nn.functional.avg_pool2d(torch.rand(n_inputs, 1, 32, 32, generator=gen), 5, 1)
    images = (images - images.mean()) / images.std()
    acts: dict[str, list[torch.Tensor]] = {"conv1": [], "conv2": [], "fc": []}
    for m in range(n_models):
        torch.manual_seed(seed * 1000 + m)
        out = RandomCNN()(images)
        for layer in acts:
            acts[layer].append(out[layer])
    return acts


# -- the checks of chapter 1, each on data with a known answer ------------------
# Every function draws from the generator it is given, in a fixed order, so the
# chapter's numbers follow from its one seed.

def decaying_activations(rng: np.random.Generator, n: int, p: int = 32,
                         decay: float = 0.85) -> np.ndarray:
    """``(n, p)`` Gaussian activations whose spectrum decays like ``decay**i``, with
    the neurons mixed by a random rotation (so no neuron is a principal axis)."""
    a = rng.standard_normal((n, p)) * (decay ** np.arange(p))
    return a @ np.linalg.qr(rng.standard_normal((p, p)))[0]


def known_transforms(a: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``a`` under maps every measure should (first four) or SVCCA with all
    directions kept should (the last) be invariant to."""
    p = a.shape[1]
    g = rng.standard_normal((p, p))  # invertible, not orthogonal
    return {
        "permute neurons": a[:, rng.permutation(p)],
        "rotate": a @ np.linalg.qr(rng.standard_normal((p, p)))[0],
        "scale x 7.3": 7.3 * a,
        "shift + 5": a + 5.0,
        "invertible map": a @ g,
    }


def invariance_table(a: np.ndarray, transforms: dict[str, np.ndarray], keep) -> pd.DataFrame:
    """Similarity of ``a`` with each transformed copy under every measure."""
    p = a.shape[1]
    rows = []
    for name, b in transforms.items():
        rows.append({"transform": name,
                     f"SVCCA keep={keep}": SIM.svcca(a, b, keep).similarity,
                     f"SVCCA keep=all ({p})": SIM.svcca(a, b, p).similarity,
                     "PWCCA(b, a)": SIM.pwcca(b, a, keep),
                     "linear CKA": SIM.linear_cka(a, b),
                     "debiased CKA": SIM.linear_cka(a, b, debiased=True)})
    return pd.DataFrame(rows).set_index("transform")


def covariance_check(rng: np.random.Generator, n: int, keep, pairs: int = 5) -> float:
    """Largest difference between :func:`~rmpm.measures.similarity.svcca`'s canonical
    correlations and the textbook covariance route, over ``pairs`` pairs of layers
    that share an 8-dimensional signal (24 and 40 neurons, different noise)."""
    diffs = []
    for _ in range(pairs):
        z = rng.standard_normal((n, 8))
        x = z @ rng.standard_normal((8, 24)) + rng.standard_normal((n, 24))
        y = z @ rng.standard_normal((8, 40)) + 2 * rng.standard_normal((n, 40))
        diffs.append(np.abs(SIM.svcca(x, y, keep).coefficients - SIM.svcca_covariance(x, y, keep)).max())
    return float(max(diffs))


def noise_curves(a: np.ndarray, sigmas, keep, rng: np.random.Generator) -> dict[str, list[float]]:
    """Similarity of ``a`` with ``a + sigma * std(a) * noise`` for each sigma, per measure."""
    scale = a.std()
    curves: dict[str, list[float]] = {"SVCCA": [], "PWCCA": [], "linear CKA": [], "debiased CKA": []}
    for s in sigmas:
        b = a + s * scale * rng.standard_normal(a.shape)
        curves["SVCCA"].append(SIM.svcca(a, b, keep).similarity)
        curves["PWCCA"].append(SIM.pwcca(a, b, keep))
        curves["linear CKA"].append(SIM.linear_cka(a, b))
        curves["debiased CKA"].append(SIM.linear_cka(a, b, debiased=True))
    return curves


def null_floor(ns, dims, reps: int, rng: np.random.Generator
               ) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """SVCCA of independent Gaussian layers (all ``k`` directions kept) for each number
    of inputs ``n`` and dimension ``k``, averaged over ``reps`` draws: the mean squared
    canonical correlation (to compare with ``k/(n-1)``) and the similarity."""
    msq: dict[int, list[float]] = {k: [] for k in dims}
    sim: dict[int, list[float]] = {k: [] for k in dims}
    for k in dims:
        for n in ns:
            r = [SIM.svcca(rng.standard_normal((n, k)), rng.standard_normal((n, k)), keep=k)
                 for _ in range(reps)]
            msq[k].append(np.mean([np.mean(x.coefficients ** 2) for x in r]))
            sim[k].append(np.mean([x.similarity for x in r]))
    return msq, sim


def conv_conventions(acts: dict[str, list[torch.Tensor]], keep, max_points: int, seed: int,
                     n_boot: int, layers=("conv1", "conv2")) -> pd.DataFrame:
    """RM of each conv layer under both conventions (every position a sample, or the
    spatial mean), with a bootstrap interval over models."""
    rows = []
    for layer in layers:
        for conv in ("positions", "pool"):
            s = SIM.pairwise_similarity(acts[layer], "svcca", keep, conv=conv,
                                        max_points=max_points, seed=seed)
            ci = stats.bootstrap_rm(s, n_boot=n_boot, seed=seed)
            rows.append({"layer": layer, "convention": conv, "RM": ci.estimate,
                         "RM low": ci.low, "RM high": ci.high})
    return pd.DataFrame(rows)


def rm_by_points(acts: dict[str, list[torch.Tensor]], keep, points, seed: int,
                 layers=("conv1", "conv2")) -> dict[str, tuple[list[int], list[float]]]:
    """RM (positions convention) of each conv layer on a growing number of sampled
    (input, position) points: layer -> (points, RM)."""
    out = {}
    for layer in layers:
        hw = acts[layer][0].shape[2] * acts[layer][0].shape[3]
        pts = [p for p in points if p <= len(acts[layer][0]) * hw]
        out[layer] = (pts, [SIM.rm(SIM.pairwise_similarity(acts[layer], "svcca", keep, max_points=p,
                                                           seed=seed)) for p in pts])
    return out


def svcca_vs_cka(acts: dict[str, list[torch.Tensor]], keep, max_points: int, seed: int
                 ) -> pd.DataFrame:
    """SVCCA and linear CKA of every pair of models in every layer, one row per pair."""
    rows = []
    for layer, xs in acts.items():
        s1 = SIM.pairwise_similarity(xs, "svcca", keep, max_points=max_points, seed=seed)
        s2 = SIM.pairwise_similarity(xs, "cka", max_points=max_points, seed=seed)
        iu = np.triu_indices(len(xs), 1)
        rows += [{"layer": layer, "svcca": a, "cka": b} for a, b in zip(s1[iu], s2[iu])]
    return pd.DataFrame(rows)


def all_pairs_vs_pair_by_pair(xs, keep) -> dict[str, float]:
    """Wall time of :func:`~rmpm.measures.similarity.pairwise_similarity` against a
    loop of :func:`~rmpm.measures.similarity.svcca` over the pairs, and their largest
    difference."""
    t0 = time.perf_counter()
    fast = SIM.pairwise_similarity(xs, "svcca", keep)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = np.eye(len(xs))
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            slow[i, j] = slow[j, i] = SIM.svcca(xs[i], xs[j], keep).similarity
    t_slow = time.perf_counter() - t0
    return {"seconds_all_pairs": t_fast, "seconds_pair_by_pair": t_slow,
            "max_difference": float(np.abs(fast - slow).max())}
