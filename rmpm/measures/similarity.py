"""Representational similarity between layers of two (or many) models.

Representational multiplicity is ``RM = 1 - similarity`` of two models' activations
on the same inputs (Heljakka et al., arXiv:2206.08890). The headline measure is
SVCCA; PWCCA and linear CKA (biased and debiased) are cross-checks.

Conventions used throughout
---------------------------
* An activation matrix has one row per data point and one column per neuron,
  ``(n_inputs, n_neurons)``; numpy arrays and torch tensors (CPU or CUDA) are accepted.
  All arithmetic is float64.
* Convolutional activations ``(n, C, H, W)`` are turned into a matrix by
  :func:`flatten_conv`: either every spatial position is a data point
  (``conv="positions"``, Raghu et al.'s convention, the default here) or the
  feature map is averaged over space (``conv="pool"``).
* Every neuron is centred over the data points before anything else, so a
  constant neuron contributes nothing; a layer whose neurons are all constant
  has no representation to compare and raises ``ValueError``.

References
----------
Raghu, Gilmer, Yosinski, Sohl-Dickstein (2017). SVCCA: Singular Vector Canonical
Correlation Analysis for Deep Learning Dynamics and Interpretability. NeurIPS.
Morcos, Raghu, Bengio (2018). Insights on representational similarity in neural
networks with canonical correlation. NeurIPS.  (PWCCA)
Kornblith, Norouzi, Lee, Hinton (2019). Similarity of Neural Network
Representations Revisited. ICML.  (linear CKA)
Song, Smola, Gretton, Bedo, Borgwardt (2012). Feature Selection via Dependence
Maximization. JMLR.  (unbiased HSIC); Nguyen, Raghu, Kornblith (2021). Do Wide
and Deep Networks Learn the Same Things? ICLR.  (debiased CKA)
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from .._checks import check_choice, check_range

Array = Union[np.ndarray, torch.Tensor]

MEASURES = ("svcca", "pwcca", "cka", "cka_debiased")
CONV_MODES = ("positions", "pool")
#: default cap on (input, position) data points for ``conv="positions"``
DEFAULT_MAX_POINTS = 20_000
#: default size of one block of the all-pairs Gram matrix, in bytes
DEFAULT_BLOCK_BYTES = 256 * 2**20

_F64 = torch.float64


# --------------------------------------------------------------------------- input

def _device_of(x: Array, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(x, torch.Tensor):
        return x.device
    return torch.device("cpu")


def flatten_conv(act: Array, mode: str = "positions", max_points: int | None = None,
                 seed: int = 0, return_inputs: bool = False):
    """Turn convolutional activations ``(n, C, H, W)`` into a matrix ``(n', C)``.

    ``mode="pool"``: spatial average pooling, ``x[i, c] = mean_{h,w} act[i, c, h, w]``;
    ``n' = n``. Compares what each channel says about the whole input.

    ``mode="positions"``: every (input, position) pair is a data point (Raghu et al.
    2017, Sec. 3.1); ``n' = n*H*W``. If ``max_points`` is given and smaller, a
    uniform random subset of ``max_points`` rows is kept, drawn with a CPU
    ``torch.Generator`` seeded by ``seed`` and depending only on ``(n, H, W)``, so
    every model of a population gets the *same* points. Rows stay in input order.

    A 2-D input passes through unchanged (as a tensor). The dtype is kept (the
    measures convert to float64), so subsampling costs no extra precision.
    With ``return_inputs``, also returns the input index of every row (so that
    resampling can draw whole inputs, not (input, position) rows).
    """
    check_choice("mode", mode, CONV_MODES)
    x = act if isinstance(act, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(act))
    if x.ndim == 2:
        return (x, torch.arange(x.shape[0])) if return_inputs else x
    if x.ndim != 4:
        raise ValueError(f"act must have shape (n, C, H, W) or (n, neurons); got {tuple(x.shape)}")
    if mode == "pool":
        out = x.mean(dim=(2, 3))
        return (out, torch.arange(x.shape[0])) if return_inputs else out
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    idx = torch.arange(n * h * w)
    if max_points is not None:
        check_range("max_points", max_points, 2, integer=True)
        if rows.shape[0] > max_points:
            gen = torch.Generator().manual_seed(int(seed))
            idx = torch.randperm(rows.shape[0], generator=gen)[:max_points].sort().values
            rows = rows[idx.to(rows.device)]
    return (rows, idx // (h * w)) if return_inputs else rows


def _matrix(x: Array, name: str, *, conv: str, max_points: int | None, seed: int,
            device=None) -> torch.Tensor:
    """float64 ``(n, p)`` tensor on ``device``, checked; conv maps are flattened first."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a numpy array or torch tensor") from err
    if x.ndim == 4:
        x = flatten_conv(x, conv, max_points, seed)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n_inputs, n_neurons) or (n, C, H, W); "
                         f"got shape {tuple(x.shape)}")
    dev = _device_of(x, device)
    t = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)))
    t = t.detach().to(device=dev, dtype=_F64)
    n, p = t.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 inputs (rows); got {n}")
    if p < 1:
        raise ValueError(f"{name} has no neurons (0 columns)")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf values; similarity is undefined")
    return t


def _same_rows(a: torch.Tensor, b: torch.Tensor, na: str = "a", nb: str = "b") -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{na} and {nb} must hold the same inputs (rows): "
                         f"{a.shape[0]} != {b.shape[0]}")


def _check_keep(keep) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise ValueError(f"keep={keep!r} must be a variance fraction in (0, 1] or an int >= 1")
    if isinstance(keep, (int, np.integer)):
        check_range("keep", int(keep), 1, integer=True)
    else:
        check_range("keep", float(keep), 0.0, 1.0, lo_open=True)


# --------------------------------------------------------------------------- SVD cut

@dataclass(frozen=True)
class Reduction:
    """One layer's activations reduced by SVD (the "SV" of SVCCA).

    ``basis`` (n, k) has orthonormal columns spanning the kept directions of the
    centred activations ``X = U S V^T``: ``basis = U[:, :k]``; ``weights`` (k, p) is
    ``S_k V_k^T = basis^T X`` (the neurons seen from the kept directions, used by
    PWCCA); ``variance_kept`` is ``sum_{i<k} s_i^2 / sum_i s_i^2``.
    """

    basis: torch.Tensor
    weights: torch.Tensor
    singular_values: torch.Tensor
    variance_kept: float
    rank: int

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])


def numerical_rank(singular_values: Array, shape: Sequence[int] | None = None) -> int:
    """Number of singular values above ``max(shape) * eps * s_0`` (numpy's
    ``matrix_rank`` rule; ``shape`` defaults to ``(len(s),)``). Directions below it
    are rounding noise, not signal; 0 when every value is 0.
    """
    s = singular_values
    if len(s) == 0 or float(s[0]) <= 0:
        return 0
    side = max(shape) if shape is not None else len(s)
    return int((s > side * np.finfo(np.float64).eps * float(s[0])).sum())


def n_kept(singular_values: Array, keep=0.99, rank: int | None = None) -> int:
    """How many singular directions SVCCA keeps.

    For a fraction ``keep`` in (0, 1]: the smallest ``k`` with
    ``sum_{i<k} s_i^2 / sum_i s_i^2 >= keep`` (Raghu et al. keep 99%). For an int:
    ``k = keep``. Either way ``k`` is capped at ``rank``, by default
    :func:`numerical_rank` of ``singular_values`` (pass the matrix's rank when its
    larger side exceeds the number of singular values).
    """
    _check_keep(keep)
    s = torch.as_tensor(singular_values, dtype=_F64).cpu()
    if rank is None:
        rank = numerical_rank(s)
    if rank == 0:
        return 0
    if isinstance(keep, (int, np.integer)):
        return min(int(keep), rank)
    energy = s**2
    frac = torch.cumsum(energy, 0) / energy.sum()
    # the slack absorbs rounding in the cumulative sum (keep=1.0 must reach the rank)
    k = int((frac < keep - 64 * torch.finfo(_F64).eps).sum()) + 1
    return min(k, rank)


def svd_reduce(x: Array, keep=0.99, *, name: str = "x", conv: str = "positions",
               max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0,
               device=None) -> Reduction:
    """Centre each neuron, SVD, keep the top directions (see :func:`n_kept`).

    ``X_c = X - 1 mean(X)`` ; ``X_c = U S V^T`` ; keep ``U[:, :k]``.
    Raises ``ValueError`` if every neuron is constant (nothing to compare).
    """
    _check_keep(keep)
    t = _matrix(x, name, conv=conv, max_points=max_points, seed=seed, device=device)
    return _reduce(t, keep, name)


def _reduce(t: torch.Tensor, keep, name: str) -> Reduction:
    t = t - t.mean(dim=0, keepdim=True)
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    rank = numerical_rank(s, t.shape)
    if rank == 0:
        raise ValueError(f"{name} has no variance: every neuron is constant over the inputs, "
                         "so there is no representation to compare")
    k = n_kept(s, keep, rank=rank)
    energy = s**2
    return Reduction(basis=u[:, :k].contiguous(), weights=s[:k, None] * vh[:k],
                     singular_values=s, variance_kept=float(energy[:k].sum() / energy.sum()),
                     rank=rank)


def svcca_basis(x: np.ndarray, keep=0.99) -> np.ndarray:
    """The "SV" step in plain numpy float64: an orthonormal basis ``U[:, :k]`` of the
    kept directions of the centred ``x`` (the same cut and rank rule as
    :func:`svd_reduce`). For loops over thousands of small resamples, where torch's
    per-call overhead dominates; raises ``ValueError`` if ``x`` has no variance.
    """
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    rank = numerical_rank(s, x.shape)
    if rank == 0:
        raise ValueError("no variance: every neuron is constant over these inputs")
    return u[:, :n_kept(s, keep, rank=rank)]


def svcca_distance(basis_a: np.ndarray, basis_b: np.ndarray) -> float:
    """``1 - mean canonical correlation`` of two :func:`svcca_basis` bases (numpy)."""
    return 1.0 - float(np.clip(np.linalg.svd(basis_a.T @ basis_b, compute_uv=False), 0.0, 1.0).mean())


def _warn_few_inputs(n: int, ka: int, kb: int) -> None:
    if ka + kb > n - 1:
        warnings.warn(
            f"only {n} inputs for {ka}+{kb} kept dimensions: two subspaces of the "
            f"{n - 1}-dimensional centred input space must share at least {ka + kb - n + 1} "
            "directions, so that many canonical correlations are 1 whatever the models do. "
            "Use more inputs (n >> dims) or a smaller keep.", UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- measures

def canonical_correlations(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Canonical correlations between two column spaces given orthonormal bases.

    With ``Q_a, Q_b`` orthonormal bases of the (centred) data, the canonical
    correlations are the singular values of ``Q_a^T Q_b``, i.e. the cosines of the
    principal angles between the subspaces (Björck & Golub 1973). This avoids
    forming and inverting covariance matrices. Sorted descending, clipped to [0, 1],
    ``min(k_a, k_b)`` of them.
    """
    return torch.linalg.svdvals(basis_a.T @ basis_b).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SVCCAResult:
    """SVCCA of two layers: ``similarity`` = mean canonical correlation;
    ``coefficients`` = the canonical correlations (descending); ``dims`` = (k_a, k_b)
    singular directions kept."""

    similarity: float
    coefficients: np.ndarray
    dims: tuple[int, int]

    def __float__(self) -> float:
        return self.similarity


def _pair(a, b, conv, max_points, seed):
    ta = _matrix(a, "a", conv=conv, max_points=max_points, seed=seed)
    tb = _matrix(b, "b", conv=conv, max_points=max_points, seed=seed, device=ta.device)
    _same_rows(ta, tb)
    return ta, tb


def svcca(a: Array, b: Array, keep=0.99, *, conv: str = "positions",
          max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> SVCCAResult:
    """SVCCA similarity (Raghu et al. 2017) of two activation matrices on the same inputs.

    1. centre every neuron; 2. ``X = U S V^T``, keep the first ``k`` columns of ``U``
    (smallest ``k`` whose ``s_i^2`` reach the fraction ``keep`` of the total, or
    ``k = keep`` if an int; see :func:`n_kept`); 3. CCA between the kept subspaces;
    the canonical correlations ``rho_1 >= ... >= rho_m``, ``m = min(k_a, k_b)``, are the
    singular values of ``U_a,k^T U_b,k``; 4. ``similarity = (1/m) sum_i rho_i``.

    In [0, 1]; 1 iff one kept subspace contains the other. Invariant to any
    invertible linear map of the kept subspace (so to neuron permutation, rotation
    and scaling). For independent data it is *not* 0: with ``n`` inputs
    ``E[mean rho^2] = max(k_a, k_b)/(n-1)`` (see :func:`null_mean_squared_cc`), so
    keep ``n >> k``. Conv activations are flattened with :func:`flatten_conv`.
    """
    ta, tb = _pair(a, b, conv, max_points, seed)
    _check_keep(keep)
    ra, rb = _reduce(ta, keep, "a"), _reduce(tb, keep, "b")
    _warn_few_inputs(ta.shape[0], ra.dims, rb.dims)
    rho = canonical_correlations(ra.basis, rb.basis)
    return SVCCAResult(similarity=float(rho.mean()), coefficients=rho.cpu().numpy(),
                       dims=(ra.dims, rb.dims))


def _pwcca_from(red_a: Reduction, m_left: torch.Tensor, rho: torch.Tensor) -> float:
    # <h_i, x_j> for canonical variate h_i = U_k p_i and neuron x_j is (p_i^T S_k V_k^T)_ij
    alpha = (m_left.T @ red_a.weights).abs().sum(dim=1)
    total = alpha.sum()
    if total <= 0:  # only possible if every kept direction is orthogonal to every neuron
        return float(rho.mean())
    return float((alpha * rho).sum() / total)


def pwcca(a: Array, b: Array, keep=0.99, *, conv: str = "positions",
          max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), after the same SVD cut as SVCCA.

    ``pwcca = sum_i alpha_i rho_i / sum_i alpha_i`` with ``alpha_i = sum_j |<h_i, x_j>|``,
    ``h_i`` the i-th (unit-norm) canonical variate of ``a`` and ``x_j`` the j-th centred
    neuron of ``a``: directions that carry more of ``a``'s neurons weigh more.
    Departures from Morcos et al. (2018): their CCA runs on the activations
    themselves; here it runs after the same SVD cut as SVCCA (``keep``), so both
    measures compare the same subspaces; and the weights come from the first
    argument only, so in an all-pairs matrix entry (i, j) is weighted by model i.
    Asymmetric: the weights come from ``a``. Invariant to permuting and rescaling
    ``a``'s neurons and to any invertible map of ``b``'s kept subspace, but *not* to
    rotations of ``a`` (the weights are L1 sums over ``a``'s own neuron basis).
    """
    ta, tb = _pair(a, b, conv, max_points, seed)
    _check_keep(keep)
    ra, rb = _reduce(ta, keep, "a"), _reduce(tb, keep, "b")
    _warn_few_inputs(ta.shape[0], ra.dims, rb.dims)
    left, rho, _ = torch.linalg.svd(ra.basis.T @ rb.basis, full_matrices=False)
    m = min(ra.dims, rb.dims)
    return _pwcca_from(ra, left[:, :m], rho[:m].clamp(0.0, 1.0))


def _hsic_terms(x: torch.Tensor):
    """Centred features and the per-row squared norms used by unbiased HSIC."""
    xc = x - x.mean(dim=0, keepdim=True)
    return xc, (xc * xc).sum(dim=1)


def _hsic_unbiased(cross_sq: torch.Tensor, kd: torch.Tensor, ld: torch.Tensor, n: int):
    # Song et al. (2012), eq. (5), for linear kernels K = XX^T, L = YY^T of centred
    # features, with K~, L~ the Gram matrices with zeroed diagonal:
    #   tr(K~L~) = ||X^T Y||_F^2 - sum_i K_ii L_ii,   1^T K~ 1 = -sum_i K_ii,
    #   K~ 1 = -diag(K)  =>  1^T K~ L~ 1 = sum_i K_ii L_ii
    kl = (kd * ld).sum()
    trace = cross_sq - kl
    return (trace + kd.sum() * ld.sum() / ((n - 1) * (n - 2)) - 2.0 * kl / (n - 2)) / (n * (n - 3))


def linear_cka(a: Array, b: Array, debiased: bool = False, *, conv: str = "positions",
               max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> float:
    """Linear CKA (Kornblith et al. 2019).

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K = X X^T``, ``L = Y Y^T``
    of centred features; with the biased HSIC this is
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``. ``debiased=True`` uses the unbiased
    HSIC estimator of Song et al. (2012) in all three places (as in Nguyen et al.
    2021); it needs n >= 4 and can be slightly negative. Invariant to orthogonal maps
    and isotropic scaling, not to general invertible maps.
    """
    ta, tb = _pair(a, b, conv, max_points, seed)
    n = ta.shape[0]
    xa, ka = _hsic_terms(ta)
    xb, kb = _hsic_terms(tb)
    for nm, x in (("a", xa), ("b", xb)):
        if not bool((x != 0).any()):
            raise ValueError(f"{nm} has no variance: every neuron is constant over the inputs")
    if not debiased:
        return float(_cka_biased(xa, xb))
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 inputs; got {n}")
    num = _hsic_unbiased(_fro2(xa.T @ xb), ka, kb, n)
    da = _hsic_unbiased(_fro2(xa.T @ xa), ka, ka, n)
    db = _hsic_unbiased(_fro2(xb.T @ xb), kb, kb, n)
    return float(_ratio_debiased(num, da, db))


def _fro2(m: torch.Tensor) -> torch.Tensor:
    return (m * m).sum()


def _cka_biased(xa, xb):
    return _fro2(xb.T @ xa) / torch.sqrt(_fro2(xa.T @ xa) * _fro2(xb.T @ xb))


def _ratio_debiased(num, da, db):
    if da <= 0 or db <= 0:
        raise ValueError("debiased CKA is undefined: the unbiased HSIC of a layer with itself "
                         "is <= 0 (too few inputs or almost no variance)")
    return num / torch.sqrt(da * db)


def null_mean_squared_cc(n_inputs: int, dims: tuple[int, int]) -> float:
    """Expected mean *squared* canonical correlation of two independent layers.

    If one of the two kept subspaces (dimensions ``k_a <= k_b``) is uniformly
    distributed in the ``(n-1)``-dimensional space of centred input vectors
    (e.g. i.i.d. Gaussian activations), ``E[sum_i rho_i^2] = E tr(P_a P_b) = k_a k_b/(n-1)``,
    so ``E[(1/k_a) sum rho_i^2] = k_b/(n-1)``: the small-sample floor of SVCCA.
    """
    check_range("n_inputs", n_inputs, 2, integer=True)
    ka, kb = sorted(int(d) for d in dims)
    return min(1.0, kb / (n_inputs - 1))


def subspace_fill(dims: Sequence[int], n_rows: int) -> float:
    """How much of the centred row space the two largest kept SVCCA subspaces fill:
    ``(k_(1) + k_(2)) / (n - 1)`` for kept dimensions ``dims`` (one per model) on ``n``
    rows. Two subspaces of the ``(n-1)``-dimensional centred space share at least
    ``k_a + k_b - (n - 1)`` directions, so at a fill of 1 or more that many canonical
    correlations are 1 whatever the models do, and well below it the floor
    ``sqrt(k/(n-1))`` (:func:`null_mean_squared_cc`) already dominates SVCCA.
    One model: its dimension counted twice."""
    check_range("n_rows", n_rows, 2, integer=True)
    d = sorted(int(k) for k in dims)
    if not d:
        raise ValueError("dims must hold at least one kept dimension")
    two = d[-2:] if len(d) > 1 else d * 2
    return float(sum(two) / (n_rows - 1))


def svcca_covariance(a: Array, b: Array, keep=0.99) -> np.ndarray:
    """Canonical correlations by the textbook route, for cross-checks (chapter 1 shows them).

    numpy SVD cut (same rule as :func:`n_kept`), then CCA from covariance matrices:
    ``rho = svd(S_aa^{-1/2} S_ab S_bb^{-1/2})``. Slower and less stable than
    :func:`svcca` (it squares the condition number), but shares no code with it.
    """
    def reduce(x):
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        xc = x - x.mean(axis=0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        k = n_kept(s, keep)
        return xc @ vt[:k].T

    za, zb = reduce(a), reduce(b)

    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v / np.sqrt(w)) @ v.T

    m = inv_sqrt(za.T @ za) @ (za.T @ zb) @ inv_sqrt(zb.T @ zb)
    return np.linalg.svd(m, compute_uv=False)[: min(za.shape[1], zb.shape[1])]


# --------------------------------------------------------------------------- all pairs

def _reduce_all(acts, measure, keep, device, conv, max_points, seed):
    if isinstance(acts, (np.ndarray, torch.Tensor)):
        acts = list(acts)  # a stacked (N, n, p) array is a sequence of N layers
    if len(acts) < 1:
        raise ValueError("acts must hold at least one model's activations")
    dev = _device_of(acts[0], device)
    reds, n = [], None
    for i, x in enumerate(acts):
        t = _matrix(x, f"acts[{i}]", conv=conv, max_points=max_points, seed=seed, device=dev)
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise ValueError(f"acts[{i}] has {t.shape[0]} inputs (rows) but acts[0] has {n}; "
                             "all models must be probed on the same inputs")
        if measure in ("svcca", "pwcca"):
            reds.append(_reduce(t, keep, f"acts[{i}]"))
        else:
            xc, kd = _hsic_terms(t)
            if not bool((xc != 0).any()):
                raise ValueError(f"acts[{i}] has no variance: every neuron is constant")
            reds.append((xc, kd))
        del t
    return reds, n, dev


def _blocks(sizes: list[int], block_bytes: int, n_groups: int = 8) -> list[list[int]]:
    """Group consecutive models so that one Gram block stays under ``block_bytes``.

    About ``n_groups`` groups even when everything would fit in one block, because
    only blocks on or above the diagonal are computed: with g groups the wasted
    lower half of the diagonal blocks is ~1/(2g) of the work instead of 1/2.
    """
    side = max(1, int(math.sqrt(block_bytes / 8)))
    side = min(side, max(max(sizes), -(-sum(sizes) // n_groups)))
    groups, cur, width = [], [], 0
    for i, k in enumerate(sizes):
        if cur and width + k > side:
            groups.append(cur)
            cur, width = [], 0
        cur.append(i)
        width += k
    groups.append(cur)
    return groups


def pairwise_similarity(acts: Sequence[Array], measure: str = "svcca", keep=0.99,
                        device=None, *, conv: str = "positions",
                        max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0,
                        block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """All-pairs similarity ``S[i, j]`` of N models' activations at one layer.

    Each model is reduced once (centring + SVD cut for SVCCA/PWCCA, centring for
    CKA); then the cross products of all reduced bases are formed block by block
    with one matrix product per block (``B_I^T B_J``), and the canonical
    correlations of every pair in a block come from one batched ``svdvals``.
    Numbers are identical (to rounding) to calling :func:`svcca`, :func:`pwcca`,
    :func:`linear_cka` on every pair.

    Memory: the reduced bases, ``8 * n * sum_i k_i`` bytes (``k_i`` kept dims; for
    CKA ``p_i`` neurons), plus one Gram block of at most ``block_bytes`` and the
    batch of ``k x k`` pair matrices in it; no ``N^2 * n`` term. Runs on the device of
    the first tensor or ``device``.

    ``measure``: "svcca" (symmetric), "pwcca" (``S[i, j] = pwcca(acts[i], acts[j])``,
    weights from model i, not symmetric), "cka", "cka_debiased". Diagonal is 1.
    """
    check_choice("measure", measure, MEASURES)
    check_choice("conv", conv, CONV_MODES)
    check_range("block_bytes", block_bytes, 1, integer=True)
    if measure in ("svcca", "pwcca"):
        _check_keep(keep)
    reds, n, dev = _reduce_all(acts, measure, keep, device, conv, max_points, seed)
    N = len(reds)
    out = np.eye(N)
    if measure in ("cka", "cka_debiased"):
        _pairs_cka(reds, n, out, debiased=measure == "cka_debiased", block_bytes=block_bytes)
        return out
    dims = [r.dims for r in reds]
    if N > 1:
        two = sorted(dims)[-2:]
        _warn_few_inputs(n, two[0], two[-1])
    groups = _blocks(dims, block_bytes)
    for gi, gI in enumerate(groups):
        bi = torch.cat([reds[i].basis for i in gI], dim=1)
        offs_i = np.cumsum([0] + [dims[i] for i in gI])
        for gJ in groups[gi:]:
            bj = bi if gJ is gI else torch.cat([reds[j].basis for j in gJ], dim=1)
            offs_j = np.cumsum([0] + [dims[j] for j in gJ])
            gram = bi.T @ bj
            pairs = [(a, b) for a, i in enumerate(gI) for b, j in enumerate(gJ) if i < j]
            if not pairs:
                continue
            if measure == "svcca":
                _svcca_block(gram, pairs, gI, gJ, offs_i, offs_j, dims, out)
            else:
                _pwcca_block(gram, pairs, gI, gJ, offs_i, offs_j, reds, out)
    return out


def _svcca_block(gram, pairs, gI, gJ, oi, oj, dims, out):
    kmax = max(max(dims[gI[a]], dims[gJ[b]]) for a, b in pairs)
    batch = gram.new_zeros((len(pairs), kmax, kmax))
    for t, (a, b) in enumerate(pairs):
        blk = gram[oi[a]:oi[a + 1], oj[b]:oj[b + 1]]
        batch[t, :blk.shape[0], :blk.shape[1]] = blk
    # zero padding only adds zero singular values, which sort after the true ones
    sv = torch.linalg.svdvals(batch).clamp_(0.0, 1.0).cpu().numpy()
    for t, (a, b) in enumerate(pairs):
        i, j = gI[a], gJ[b]
        m = min(dims[i], dims[j])
        out[i, j] = out[j, i] = sv[t, :m].mean()


def _pwcca_block(gram, pairs, gI, gJ, oi, oj, reds, out):
    for a, b in pairs:
        i, j = gI[a], gJ[b]
        blk = gram[oi[a]:oi[a + 1], oj[b]:oj[b + 1]]
        m = min(blk.shape)
        left, rho, right_h = torch.linalg.svd(blk, full_matrices=False)
        rho = rho[:m].clamp(0.0, 1.0)
        out[i, j] = _pwcca_from(reds[i], left[:, :m], rho)
        out[j, i] = _pwcca_from(reds[j], right_h[:m].T, rho)


def _pairs_cka(reds, n, out, *, debiased, block_bytes):
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 inputs; got {n}")
    if debiased:
        self_h = [_hsic_unbiased(_fro2(x.T @ x), kd, kd, n) for x, kd in reds]
        if any(h <= 0 for h in self_h):
            _ratio_debiased(0.0, min(self_h), 1.0)  # raises the clear error
    else:
        self_h = [_fro2(x.T @ x) for x, _ in reds]
    widths = [x.shape[1] for x, _ in reds]
    groups = _blocks(widths, block_bytes)
    for gi, gI in enumerate(groups):
        xi = torch.cat([reds[i][0] for i in gI], dim=1)
        oi = np.cumsum([0] + [widths[i] for i in gI])
        for gJ in groups[gi:]:
            xj = xi if gJ is gI else torch.cat([reds[j][0] for j in gJ], dim=1)
            oj = np.cumsum([0] + [widths[j] for j in gJ])
            gram = xi.T @ xj
            for a, i in enumerate(gI):
                for b, j in enumerate(gJ):
                    if i >= j:
                        continue
                    c2 = _fro2(gram[oi[a]:oi[a + 1], oj[b]:oj[b + 1]])
                    if debiased:
                        num = _hsic_unbiased(c2, reds[i][1], reds[j][1], n)
                    else:
                        num = c2
                    out[i, j] = out[j, i] = float(num / torch.sqrt(self_h[i] * self_h[j]))


def pairwise_layers(acts_by_layer: Mapping[str, Sequence[Array]], measure: str = "svcca",
                    keep=0.99, device=None, **kwargs) -> dict[str, np.ndarray]:
    """:func:`pairwise_similarity` for every layer: ``{layer: (N, N) matrix}``."""
    if not isinstance(acts_by_layer, Mapping) or not acts_by_layer:
        raise ValueError("acts_by_layer must be a non-empty dict {layer name: [acts per model]}")
    sizes = {k: len(v) for k, v in acts_by_layer.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every layer needs the same number of models; got {sizes}")
    return {layer: pairwise_similarity(acts, measure, keep, device, **kwargs)
            for layer, acts in acts_by_layer.items()}


def representational_multiplicity(sim: Array | Mapping[str, Array]) -> float:
    """RM of a population: mean over ordered pairs ``i != j`` of ``1 - S[i, j]``.

    For a dict of per-layer matrices, the mean over layers of the per-layer RM
    (the model-level RM of the protocol).
    """
    if isinstance(sim, Mapping):
        if not sim:
            raise ValueError("sim must hold at least one layer")
        return float(np.mean([representational_multiplicity(m) for m in sim.values()]))
    s = sim.detach().cpu().numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim)
    s = s.astype(np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"sim must be a square (N, N) matrix; got shape {s.shape}")
    if s.shape[0] < 2:
        raise ValueError("RM needs at least 2 models")
    if not np.isfinite(s).all():
        raise ValueError("sim contains NaN/inf")
    off = ~np.eye(s.shape[0], dtype=bool)
    return float((1.0 - s[off]).mean())


rm = representational_multiplicity


# --------------------------------------------------------------------------- objects

@dataclass(frozen=True)
class _Measure:
    conv: str = "positions"
    max_points: int | None = DEFAULT_MAX_POINTS
    seed: int = 0

    def _kw(self):
        return dict(conv=self.conv, max_points=self.max_points, seed=self.seed)


@dataclass(frozen=True)
class SVCCA(_Measure):
    """``SVCCA(keep=0.99).score(a, b)``; ``.pairwise(acts)`` for all pairs."""

    keep: float | int = 0.99

    def score(self, a: Array, b: Array) -> float:
        return svcca(a, b, self.keep, **self._kw()).similarity

    def pairwise(self, acts, device=None) -> np.ndarray:
        return pairwise_similarity(acts, "svcca", self.keep, device, **self._kw())


@dataclass(frozen=True)
class PWCCA(_Measure):
    """``PWCCA(keep=0.99).score(a, b)`` (weights from ``a``)."""

    keep: float | int = 0.99

    def score(self, a: Array, b: Array) -> float:
        return pwcca(a, b, self.keep, **self._kw())

    def pairwise(self, acts, device=None) -> np.ndarray:
        return pairwise_similarity(acts, "pwcca", self.keep, device, **self._kw())


@dataclass(frozen=True)
class LinearCKA(_Measure):
    """``LinearCKA(debiased=False).score(a, b)``."""

    debiased: bool = False

    def score(self, a: Array, b: Array) -> float:
        return linear_cka(a, b, self.debiased, **self._kw())

    def pairwise(self, acts, device=None) -> np.ndarray:
        m = "cka_debiased" if self.debiased else "cka"
        return pairwise_similarity(acts, m, device=device, **self._kw())


__all__ = [
    "SVCCAResult", "Reduction", "svcca", "pwcca", "linear_cka", "flatten_conv", "svd_reduce",
    "n_kept", "numerical_rank", "svcca_basis", "svcca_distance", "canonical_correlations", "svcca_covariance",
    "null_mean_squared_cc", "subspace_fill", "pairwise_similarity",
    "pairwise_layers", "representational_multiplicity", "rm", "SVCCA", "PWCCA", "LinearCKA",
    "MEASURES", "CONV_MODES",
]
