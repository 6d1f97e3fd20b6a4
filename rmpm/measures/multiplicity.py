"""Predictive multiplicity (PM) of a population of models.

Input everywhere: ``probs`` of shape ``(M models, N inputs, K classes)``, the
predicted class probabilities of every model on the same inputs (numpy or torch;
float64 internally). A model's *prediction* is ``argmax_k probs[m, n, k]`` (ties go
to the lowest class index, as ``numpy.argmax``).

Our reading of the PM of Heljakka et al. (arXiv:2206.08890), whose abstract speaks of
"the variance of the models' predictions" without fixing a formula, is
:func:`prediction_variance`.
The others are the standard measures of the predictive-multiplicity literature:
churn / disagreement, ambiguity and discrepancy (Marx, Calmon & Ustun 2020,
"Predictive Multiplicity in Classification", ICML), the entropy of the vote, and
Rashomon capacity (Hsu & Calmon 2022, "Rashomon Capacity: A Metric for Predictive
Multiplicity in Classification", NeurIPS).

The Rashomon set for a *fixed* population
-----------------------------------------
Marx et al. define ambiguity and discrepancy over the epsilon-Rashomon set
``R_eps = {h : err(h) <= err(h0) + eps}`` of *all* models in a hypothesis class
within ``eps`` of a baseline ``h0``'s (0-1) training error, found by integer
programming. Here the hypothesis class is replaced by the models we have:

* ``epsilon=None`` (default): the whole population is the Rashomon set. This is
  the protocol's use: a population of models trained to the same training
  performance (experiment 2 shows they are equally good).
* ``epsilon=e`` with ``labels``: the set is the reference plus the models whose
  error rate on the labelled sample given is at most ``err(reference) + e``
  (``e`` in [0, 1], absolute error rate, as Marx et al.'s eps).

Both are sample estimates over the given inputs, lower bounds of the quantities
over the full hypothesis class.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._checks import check_range

Array = "np.ndarray | torch.Tensor"


def as_probs(probs, name: str = "probs", atol: float = 1e-4) -> np.ndarray:
    """Check and return ``probs`` as a float64 array (M, N, K) whose rows sum to 1.

    Rows may deviate from summing to 1 by at most ``atol`` (float32 softmax
    rounding); they are then renormalised exactly. Anything else is an error.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"{name} must have shape (models, inputs, classes); got {p.shape}")
    m, n, k = p.shape
    if m < 1 or n < 1 or k < 2:
        raise ValueError(f"{name} needs >= 1 model, >= 1 input and >= 2 classes; got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contains NaN/inf")
    if (p < 0).any():
        raise ValueError(f"{name} has negative entries; pass probabilities (softmax outputs)")
    sums = p.sum(axis=2)
    if np.abs(sums - 1).max() > atol:
        raise ValueError(f"{name} must sum to 1 over classes (last axis); sums lie in "
                         f"[{sums.min():.6g}, {sums.max():.6g}]. Pass softmax outputs, not logits")
    return p / sums[..., None]


def predictions(probs) -> np.ndarray:
    """Predicted class of every model on every input, ``(M, N)`` ints."""
    return as_probs(probs).argmax(axis=2)


def check_labels(labels, n: int, k: int | None = None, name: str = "labels") -> np.ndarray:
    """Labels as int64 class indices, shape (n,), each in [0, k) when ``k`` is given;
    anything else is one error naming ``name`` (the caller's parameter)."""
    y = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the {n} inputs of probs; "
                         f"got {y.shape}")
    allowed = "integer class indices" + (f" 0 to {k - 1} (probs has {k} classes)" if k else "")
    if y.dtype.kind not in "iuf":  # strings, objects, booleans are not class indices
        raise ValueError(f"{name} must be {allowed}; got dtype {y.dtype}"
                         + (f" (e.g. {y.flat[0]!r})" if y.size else ""))
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.isfinite(y).all() and np.all(np.equal(np.mod(y, 1), 0))):
            raise ValueError(f"{name} must be {allowed}; got non-integer values")
        y = y.astype(np.int64)
    if k is not None and y.size and (y.min() < 0 or y.max() >= k):
        bad = y[(y < 0) | (y >= k)]
        raise ValueError(f"{name} must be {allowed}; got {len(bad)} out of range "
                         f"(e.g. {int(bad[0])})")
    return y


def prediction_variance(probs, per_input: bool = False, ddof: int = 0):
    """PM as we read the paper's abstract: variance across models of the predicted probabilities.

    ``PV = (1/(N K)) sum_n sum_k Var_m[p_m(k | x_n)]`` with the population variance
    ``Var_m = (1/(M - ddof)) sum_m (p_m - mean_m p)^2`` (``ddof=0`` default; ``ddof=1``
    gives the unbiased sample variance). ``per_input=True`` returns the ``(N,)`` vector
    averaged over classes only. 0 iff all models output identical probabilities.
    """
    p = as_probs(probs)
    check_range("ddof", ddof, 0, integer=True)
    if p.shape[0] - ddof < 1:
        raise ValueError(f"prediction variance with ddof={ddof} needs more than {ddof} models")
    v = p.var(axis=0, ddof=ddof).mean(axis=1)
    return v if per_input else float(v.mean())


def disagreement_matrix(probs) -> np.ndarray:
    """Churn: ``D[i, j] = (1/N) sum_n 1[yhat_i(x_n) != yhat_j(x_n)]``, (M, M), zero diagonal."""
    yhat = predictions(probs)
    m = yhat.shape[0]
    d = np.zeros((m, m))
    for i in range(m):
        d[i] = (yhat != yhat[i]).mean(axis=1)
    return d


def mean_disagreement(probs) -> float:
    """Mean off-diagonal churn over ordered pairs of distinct models."""
    d = disagreement_matrix(probs)
    m = d.shape[0]
    if m < 2:
        raise ValueError("disagreement needs at least 2 models")
    return float(d.sum() / (m * (m - 1)))


def rashomon_set(probs, reference: int = 0, epsilon: float | None = None,
                 labels=None) -> np.ndarray:
    """Indices of the models forming the epsilon-Rashomon set (see module docstring).

    ``epsilon=None``: all models. Otherwise ``{m : err_m <= err_ref + epsilon}`` on the
    labelled sample (``labels`` required); always contains ``reference``.
    """
    p = as_probs(probs)
    m = p.shape[0]
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)):
        raise ValueError(f"reference={reference!r} must be a model index")
    if not -m <= reference < m:
        raise ValueError(f"reference={reference} is out of range for {m} models")
    reference = int(reference) % m
    if epsilon is None:
        return np.arange(m)
    check_range("epsilon", epsilon, 0.0, 1.0)
    if labels is None:
        raise ValueError("epsilon needs labels: the Rashomon set is defined by error rates")
    y = check_labels(labels, p.shape[1], p.shape[2])
    err = (p.argmax(axis=2) != y[None]).mean(axis=1)
    # tiny slack so models exactly epsilon worse (a rational error rate) are in
    return np.flatnonzero(err <= err[reference] + epsilon + 1e-12)


def ambiguity(probs, reference: int = 0, epsilon: float | None = None, labels=None,
              per_input: bool = False):
    """Ambiguity (Marx, Calmon & Ustun 2020): the fraction of inputs on which *some*
    model of the Rashomon set predicts differently from the reference model.

    ``A = (1/N) sum_n max_{m in R} 1[yhat_m(x_n) != yhat_ref(x_n)]``. ``per_input`` gives
    the (N,) indicators (the "ambiguous inputs"). Set by ``epsilon``/``labels``: see
    :func:`rashomon_set`.
    """
    yhat = predictions(probs)
    idx = rashomon_set(probs, reference, epsilon, labels)
    flags = (yhat[idx] != yhat[int(reference) % yhat.shape[0]][None]).any(axis=0)
    return flags.astype(np.float64) if per_input else float(flags.mean())


def discrepancy(probs, reference: int = 0, epsilon: float | None = None, labels=None) -> float:
    """Discrepancy (Marx, Calmon & Ustun 2020): the largest fraction of inputs on which
    one model of the Rashomon set disagrees with the reference,
    ``max_{m in R} (1/N) sum_n 1[yhat_m(x_n) != yhat_ref(x_n)]``. Always <= ambiguity.
    """
    yhat = predictions(probs)
    idx = rashomon_set(probs, reference, epsilon, labels)
    ref = yhat[int(reference) % yhat.shape[0]]
    return float((yhat[idx] != ref[None]).mean(axis=1).max())


def vote_counts(yhat: np.ndarray, k: int) -> np.ndarray:
    """``(N, K)``: how many models predict class k on input n, from the predicted
    classes ``yhat`` (M, N) (e.g. :func:`predictions`) of ``k`` classes."""
    n = yhat.shape[1]
    votes = np.zeros((n, k))
    np.add.at(votes, (np.broadcast_to(np.arange(n), yhat.shape), yhat), 1.0)
    return votes


def vote_entropy(probs, per_input: bool = False, normalize: bool = False):
    """Entropy of the models' vote: ``H_n = -sum_k v_nk log v_nk`` with
    ``v_nk = (1/M) #{m : yhat_m(x_n) = k}``, in nats. 0 iff all models agree on x_n.
    ``normalize=True`` divides by ``log K`` (range [0, 1]). Mean over inputs unless
    ``per_input``.
    """
    p = as_probs(probs)
    m, k = p.shape[0], p.shape[2]
    v = vote_counts(p.argmax(axis=2), k) / m
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(v > 0, v * np.log(v), 0.0).sum(axis=1)
    if normalize:
        h = h / math.log(k)
    return h if per_input else float(h.mean())


def rashomon_capacity(probs, n_iter: int = 1000, tol: float = 1e-3,
                      return_log: bool = False) -> np.ndarray:
    """Rashomon capacity (Hsu & Calmon 2022) of every input, ``(N,)``, in [1, min(M, K)].

    For input ``x`` the models define a channel from model index to class,
    ``P[m, k] = p_m(k | x)``; its capacity ``C(x) = max_pi I(pi; P)`` (nats) is found by
    Blahut-Arimoto, and ``RC(x) = exp(C(x))`` (= ``2^C`` in bits). ``RC = 1`` iff all
    models output the same distribution; ``RC = c`` if they split into ``c`` confident,
    distinct classes. All inputs are iterated at once (arrays (N, M, K)):

    ``q = pi P``,  ``D_m = KL(P_m || q)``,  ``pi_m <- pi_m exp(D_m) / Z``,

    stopped when for every input the gap between the upper bound ``max_m D_m`` and the
    lower bound ``sum_m pi_m D_m`` of ``C`` is below ``tol`` (nats), or after ``n_iter``
    iterations (then the lower bound is returned and a warning raised). The value
    returned is the lower bound, so the default ``tol=1e-3`` guarantees ``C`` to within
    1e-3 nats, i.e. ``RC`` to within 0.1 % (relative), from below.
    ``return_log=True`` returns ``C`` in nats instead.
    """
    check_range("n_iter", n_iter, 1, integer=True)
    check_range("tol", tol, 0.0, lo_open=True)
    p = np.transpose(as_probs(probs), (1, 0, 2))  # (N, M, K)
    n, m, k = p.shape
    logp = np.log(np.where(p > 0, p, 1.0))  # 0 log 0 = 0
    pi = np.full((n, m), 1.0 / m)
    lower = np.zeros(n)
    active = np.arange(n)
    for _ in range(n_iter):
        pa, lpa, pia = p[active], logp[active], pi[active]
        q = np.einsum("nm,nmk->nk", pia, pa)
        logq = np.log(np.where(q > 0, q, 1.0))
        d = (pa * (lpa - logq[:, None, :])).sum(axis=2)  # KL(P_m || q), (n', M)
        d = np.maximum(d, 0.0)
        lo = (pia * d).sum(axis=1)
        hi = d.max(axis=1)
        lower[active] = lo
        done = hi - lo < tol
        w = pia * np.exp(d - hi[:, None])  # shift by the max for stability
        pi[active] = w / w.sum(axis=1, keepdims=True)
        active = active[~done]
        if active.size == 0:
            break
    else:
        warnings.warn(f"rashomon_capacity: {active.size} inputs did not converge to tol={tol} "
                      f"in n_iter={n_iter}; returning the lower bound", RuntimeWarning,
                      stacklevel=2)
    return lower if return_log else np.exp(lower)


def accuracies(probs, labels) -> np.ndarray:
    """Accuracy of every model on the labelled inputs, (M,)."""
    p = as_probs(probs)
    y = check_labels(labels, p.shape[1], p.shape[2])
    return (p.argmax(axis=2) == y[None]).mean(axis=1)


def summary(probs, labels=None, reference: int = 0) -> dict[str, float]:
    """All scalar PM measures of a population (Rashomon set = all models).

    Keys: n_models, n_inputs, prediction_variance, mean_disagreement, ambiguity,
    discrepancy, vote_entropy, rashomon_capacity (mean over inputs) and, with labels,
    accuracy_mean/std/min/max and ensemble_accuracy (argmax of the mean probabilities).
    """
    p = as_probs(probs)
    m, n, _ = p.shape
    out = {
        "n_models": float(m),
        "n_inputs": float(n),
        "prediction_variance": prediction_variance(p),
        "mean_disagreement": mean_disagreement(p) if m > 1 else 0.0,
        "ambiguity": ambiguity(p, reference),
        "discrepancy": discrepancy(p, reference),
        "vote_entropy": vote_entropy(p),
        "rashomon_capacity": float(rashomon_capacity(p).mean()),
    }
    if labels is not None:
        acc = accuracies(p, labels)
        y = check_labels(labels, n, p.shape[2])
        out.update(accuracy_mean=float(acc.mean()), accuracy_std=float(acc.std()),
                   accuracy_min=float(acc.min()), accuracy_max=float(acc.max()),
                   ensemble_accuracy=float((p.mean(axis=0).argmax(axis=1) == y).mean()))
    return out


__all__ = ["as_probs", "predictions", "prediction_variance", "disagreement_matrix",
           "mean_disagreement", "rashomon_set", "ambiguity", "discrepancy", "vote_entropy",
           "rashomon_capacity", "accuracies", "summary"]
