"""rmpm.measures.multiplicity on hand-built populations with known answers."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from rmpm.measures import multiplicity as PM


def onehot(preds, k):
    """probs (M, N, K) from hard predictions (M, N)."""
    preds = np.asarray(preds)
    return np.eye(k)[preds]


# 3 models, 4 inputs, 3 classes. Model 0 is the reference.
PREDS = [[0, 1, 2, 0],
         [0, 1, 1, 0],
         [1, 1, 2, 2]]
LABELS = [0, 1, 2, 0]   # accuracies: 1.0, 0.75, 0.5


def test_all_models_agree_gives_zero_multiplicity():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(1, 30)).repeat(5, axis=0)
    assert PM.prediction_variance(p) == pytest.approx(0.0, abs=1e-30)
    assert not PM.disagreement_matrix(p).any()
    assert PM.ambiguity(p) == 0.0 and PM.discrepancy(p) == 0.0
    assert PM.vote_entropy(p) == 0.0
    np.testing.assert_allclose(PM.rashomon_capacity(p), 1.0, atol=1e-12)
    s = PM.summary(p)
    assert s["mean_disagreement"] == 0.0 and s["rashomon_capacity"] == pytest.approx(1.0)


def test_known_disagreements():
    p = onehot(PREDS, 3)
    d = PM.disagreement_matrix(p)
    np.testing.assert_allclose(d, [[0, 0.25, 0.5], [0.25, 0, 0.75], [0.5, 0.75, 0]])
    assert PM.mean_disagreement(p) == pytest.approx(0.5)
    # inputs 0, 2, 3 have a model differing from model 0
    assert PM.ambiguity(p) == pytest.approx(0.75)
    np.testing.assert_array_equal(PM.ambiguity(p, per_input=True), [1, 0, 1, 1])
    assert PM.discrepancy(p) == pytest.approx(0.5)
    assert PM.discrepancy(p, reference=1) == pytest.approx(0.75)
    # Rashomon set from error rates: err = 0, .25, .5 -> eps=0.25 keeps models 0, 1
    np.testing.assert_array_equal(PM.rashomon_set(p, 0, 0.25, LABELS), [0, 1])
    assert PM.ambiguity(p, 0, epsilon=0.25, labels=LABELS) == pytest.approx(0.25)
    assert PM.discrepancy(p, 0, epsilon=0.25, labels=LABELS) == pytest.approx(0.25)
    assert PM.discrepancy(p, 0, epsilon=0.0, labels=LABELS) == 0.0
    np.testing.assert_allclose(PM.accuracies(p, LABELS), [1.0, 0.75, 0.5])
    # vote entropy: input 1 unanimous; inputs 0, 2, 3 split 2:1
    h21 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    np.testing.assert_allclose(PM.vote_entropy(p, per_input=True), [h21, 0, h21, h21])
    assert PM.vote_entropy(p, normalize=True) == pytest.approx(0.75 * h21 / math.log(3))


def test_prediction_variance_by_hand():
    p = np.array([[[1.0, 0.0], [0.5, 0.5]],
                  [[0.0, 1.0], [0.5, 0.5]]])
    # input 0: both classes have values {1, 0} -> var 0.25; input 1: var 0
    np.testing.assert_allclose(PM.prediction_variance(p, per_input=True), [0.25, 0.0])
    assert PM.prediction_variance(p) == pytest.approx(0.125)
    assert PM.prediction_variance(p, ddof=1) == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(5), size=(7, 11))
    assert PM.prediction_variance(q) == pytest.approx(np.var(q, axis=0).mean())
    assert PM.prediction_variance(torch.tensor(q)) == pytest.approx(np.var(q, axis=0).mean())


def capacity_two_models(p0, p1):
    """Capacity of a 2-input channel by direct 1-D maximisation of I(pi) (independent)."""
    def neg_mi(w):
        q = w * p0 + (1 - w) * p1
        kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / q), 0))
        return -(w * kl(p0) + (1 - w) * kl(p1))
    res = minimize_scalar(neg_mi, bounds=(0, 1), method="bounded", options={"xatol": 1e-10})
    return math.exp(-res.fun)


def test_rashomon_capacity_known_values():
    # Z-channel with crossover 1/2: capacity log2(5/4) bits -> RC = 5/4
    z = np.array([[[1.0, 0.0]], [[0.5, 0.5]]])
    assert PM.rashomon_capacity(z, tol=1e-10, n_iter=10000)[0] == pytest.approx(1.25, abs=1e-6)
    # c confident models on c distinct classes -> RC = c; repeated models change nothing
    assert PM.rashomon_capacity(onehot([[0], [1], [2], [2]], 4))[0] == pytest.approx(3.0, abs=1e-3)
    # vectorised over inputs: agrees with an independent optimiser input by input
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(2, 25))
    rc = PM.rashomon_capacity(p, tol=1e-9, n_iter=20000)
    ref = [capacity_two_models(p[0, i], p[1, i]) for i in range(25)]
    np.testing.assert_allclose(rc, ref, atol=1e-6)
    assert np.all(rc >= 1.0) and np.all(rc <= 2.0 + 1e-12)


def test_rashomon_capacity_warns_when_not_converged():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        PM.rashomon_capacity(p, n_iter=1, tol=1e-12)


def test_summary_with_labels():
    p = onehot(PREDS, 3)
    s = PM.summary(p, labels=LABELS)
    assert s["accuracy_mean"] == pytest.approx(0.75)
    assert s["accuracy_min"] == 0.5 and s["accuracy_max"] == 1.0
    assert s["ensemble_accuracy"] == pytest.approx(1.0)  # majority vote is right on all 4
    assert s["ambiguity"] == pytest.approx(0.75) and s["discrepancy"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in s.values())


def test_invalid_probs_raise():
    with pytest.raises(ValueError, match="shape"):
        PM.prediction_variance(np.ones((3, 4)))
    with pytest.raises(ValueError, match="logits"):
        PM.prediction_variance(np.random.default_rng(0).standard_normal((2, 3, 4)) ** 2)
    bad = onehot(PREDS, 3)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PM.vote_entropy(bad)
    with pytest.raises(ValueError, match="labels"):
        PM.ambiguity(onehot(PREDS, 3), epsilon=0.1)
    with pytest.raises(ValueError, match="labels must have shape"):
        PM.accuracies(onehot(PREDS, 3), [0, 1])
    with pytest.raises(ValueError, match="reference"):
        PM.discrepancy(onehot(PREDS, 3), reference=3)
    with pytest.raises(ValueError, match="epsilon"):
        PM.ambiguity(onehot(PREDS, 3), epsilon=2.0, labels=LABELS)
    # float32 softmax rounding is fine
    p32 = torch.softmax(torch.randn(3, 5, 4), dim=-1)
    assert np.isfinite(PM.prediction_variance(p32))
