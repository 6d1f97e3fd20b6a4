"""rmpm.measures.similarity: invariances, independent re-implementations, known values, edge cases."""

import numpy as np
import pytest
import torch

from rmpm.measures import similarity as S


def rand(n, p, seed=0):
    return np.random.default_rng(seed).standard_normal((n, p))


def orthogonal(p, seed=0):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return q * np.sign(np.diag(r))


def related(n=400, p=12, noise=1.0, seed=0):
    """Two layers that share a latent signal, as two trained models would."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    a = z @ rng.standard_normal((6, p)) + noise * rng.standard_normal((n, p))
    b = z @ rng.standard_normal((6, p + 3)) + noise * rng.standard_normal((n, p + 3))
    return a, b


# ----------------------------------------------------------------- independent references

def cca_by_covariance(a, b, keep):
    """Textbook SVCCA written independently: numpy SVD cut, then CCA from the
    covariance matrices, rho = svd(Saa^-1/2 Sab Sbb^-1/2)."""
    def reduce(x):
        xc = x - x.mean(0)
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        if isinstance(keep, int):
            k = keep
        else:
            k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep) + 1)
        return xc @ vt[:k].T

    za, zb = reduce(a), reduce(b)
    n = za.shape[0]
    saa, sbb, sab = za.T @ za / (n - 1), zb.T @ zb / (n - 1), za.T @ zb / (n - 1)

    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w**-0.5) @ v.T

    rho = np.linalg.svd(inv_sqrt(saa) @ sab @ inv_sqrt(sbb), compute_uv=False)
    return rho[: min(za.shape[1], zb.shape[1])]


def cka_from_examples(a, b, debiased=False):
    """CKA from n x n Gram matrices (Kornblith et al. eq. 3 / Song et al. 2012 eq. 5)."""
    k, l = a @ a.T, b @ b.T
    n = k.shape[0]

    def hsic(k, l):
        if not debiased:
            h = np.eye(n) - 1.0 / n
            return np.trace(k @ h @ l @ h)
        kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        one = np.ones(n)
        return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


# ----------------------------------------------------------------- agreement

@pytest.mark.parametrize("keep", [0.99, 0.9, 5])
def test_svcca_matches_covariance_cca(keep):
    a, b = related()
    res = S.svcca(a, b, keep)
    ref = cca_by_covariance(a, b, keep)
    assert res.coefficients.shape == ref.shape
    np.testing.assert_allclose(res.coefficients, ref, atol=1e-9)
    assert res.similarity == pytest.approx(ref.mean(), abs=1e-9)
    assert res.dims[0] == (keep if isinstance(keep, int) else res.dims[0])


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_gram_formula(debiased):
    a, b = related(n=60, p=8)
    ref = cka_from_examples(a - a.mean(0), b - b.mean(0), debiased)
    assert S.linear_cka(a, b, debiased) == pytest.approx(ref, abs=1e-10)


def test_cka_published_values():
    # Kornblith et al. (2019) demo notebook (google-research/representation_similarity):
    # np.random.seed(1337); X = randn(100, 10); Y = randn(100, 10) + X
    # prints linear CKA 0.55761 and debiased 0.51346.
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert S.linear_cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert S.linear_cka(x, y, debiased=True) == pytest.approx(0.51346, abs=5e-6)


def test_cka_one_neuron_is_squared_pearson():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200)
    y = 0.5 * x + rng.standard_normal(200)
    r = np.corrcoef(x, y)[0, 1]
    assert S.linear_cka(x[:, None], y[:, None]) == pytest.approx(r**2, abs=1e-12)
    # and SVCCA of one neuron each is |r|
    assert S.svcca(x[:, None], y[:, None]).similarity == pytest.approx(abs(r), abs=1e-12)


def test_cka_closed_form_anisotropic_scaling():
    # X with orthonormal centred columns, Y = X diag(1, c): CKA = (1+c^2)/(sqrt2 sqrt(1+c^4))
    x = np.linalg.qr(rand(50, 2) - rand(50, 2).mean(0))[0]
    x -= x.mean(0)
    x = np.linalg.svd(x, full_matrices=False)[0]
    c = 3.0
    expected = (1 + c**2) / (np.sqrt(2) * np.sqrt(1 + c**4))
    assert S.linear_cka(x, x @ np.diag([1.0, c])) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------- invariances

@pytest.mark.parametrize("measure", ["svcca", "pwcca", "cka", "cka_debiased"])
def test_invariant_to_rotation_permutation_scaling_shift(measure):
    a, b = related()
    q = orthogonal(a.shape[1], seed=1)
    perm = np.random.default_rng(2).permutation(a.shape[1])
    f = {"svcca": lambda x, y: S.svcca(x, y).similarity, "pwcca": S.pwcca,
         "cka": S.linear_cka, "cka_debiased": lambda x, y: S.linear_cka(x, y, True)}[measure]
    assert f(a, 4.2 * (a @ q) + 7.0) == pytest.approx(1.0, abs=1e-9)
    assert f(a, a[:, perm]) == pytest.approx(1.0, abs=1e-9)
    base = f(a, b)
    qb = orthogonal(b.shape[1], seed=3)
    assert f(a[:, perm] * 3.0, (b @ qb) * 0.01) == pytest.approx(base, abs=1e-9)
    if measure == "pwcca":
        # the weights sum |<h_i, x_j>| over a's own neurons: not invariant to rotating a
        assert abs(f(a @ q, b) - base) > 1e-6
    else:
        assert f(a @ q, b) == pytest.approx(base, abs=1e-9)


def test_svcca_invariant_to_invertible_maps_within_kept_subspace():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((300, 4))            # rank-4 signal
    a = z @ rng.standard_normal((4, 10))
    m = rng.standard_normal((4, 4)) + 3 * np.eye(4)   # invertible, far from orthogonal
    b = (z @ m) @ rng.standard_normal((4, 7))
    for keep in (1.0, 4):
        res = S.svcca(a, b, keep)
        assert res.dims == (4, 4)
        assert res.similarity == pytest.approx(1.0, abs=1e-9)
    # full rank: every invertible map of the neurons, with every direction kept
    x = rand(300, 10)
    g = rng.standard_normal((10, 10))
    assert S.svcca(x, x @ g, keep=10).similarity == pytest.approx(1.0, abs=1e-9)
    # CKA is not invariant to such maps (Kornblith et al. 2019, Sec. 3)
    assert S.linear_cka(x, x @ g) < 0.99


# ----------------------------------------------------------------- small-sample bias

def test_independent_data_small_but_biased_as_predicted():
    k = 10
    for n in (60, 400):
        sq = [np.mean(S.svcca(rand(n, k, s), rand(n, k, 100 + s), keep=k).coefficients ** 2)
              for s in range(12)]
        expected = S.null_mean_squared_cc(n, (k, k))  # k/(n-1)
        assert np.mean(sq) == pytest.approx(expected, rel=0.15)
    small = S.svcca(rand(4000, 10, 1), rand(4000, 10, 2), keep=10).similarity
    assert small < 0.06
    assert S.svcca(rand(60, 10, 1), rand(60, 10, 2), keep=10).similarity > 2 * small


# ----------------------------------------------------------------- conv

def test_flatten_conv_modes_and_determinism():
    act = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    pooled = S.flatten_conv(act, "pool")
    torch.testing.assert_close(pooled, act.mean(dim=(2, 3)))
    pos = S.flatten_conv(act, "positions")
    assert pos.shape == (5 * 16, 3)
    torch.testing.assert_close(pos[16 * 2 + 4 * 1 + 3], act[2, :, 1, 3])
    sub1 = S.flatten_conv(act, "positions", max_points=20, seed=3)
    sub2 = S.flatten_conv(act * 2, "positions", max_points=20, seed=3)  # another "model"
    assert sub1.shape == (20, 3)
    torch.testing.assert_close(sub2, 2 * sub1)  # same points chosen
    assert not torch.equal(S.flatten_conv(act, "positions", max_points=20, seed=4), sub1)
    with pytest.raises(ValueError, match="mode"):
        S.flatten_conv(act, "mean")


def test_conv_inputs_through_measures():
    rng = np.random.default_rng(0)
    act = rng.standard_normal((20, 4, 3, 3))
    for conv in ("pool", "positions"):
        flat = S.flatten_conv(act, conv, max_points=100).numpy()
        assert S.svcca(act, act[:, ::-1], conv=conv, max_points=100).similarity == \
            pytest.approx(1.0, abs=1e-9)
        other = rng.standard_normal((20, 6, 3, 3))
        assert S.svcca(act, other, conv=conv, max_points=100).similarity == pytest.approx(
            S.svcca(flat, S.flatten_conv(other, conv, max_points=100).numpy()).similarity,
            abs=1e-12)


# ----------------------------------------------------------------- all pairs

def population(n_models=5, n=300, p=10, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 5))
    return [z @ rng.standard_normal((5, p + i)) + rng.standard_normal((n, p + i)) * (0.5 + 0.2 * i)
            for i in range(n_models)]


@pytest.mark.parametrize("measure", S.MEASURES)
def test_pairwise_equals_pair_by_pair(measure):
    acts = population()
    mat = S.pairwise_similarity(acts, measure)
    single = {"svcca": lambda x, y: S.svcca(x, y).similarity, "pwcca": S.pwcca,
              "cka": S.linear_cka, "cka_debiased": lambda x, y: S.linear_cka(x, y, True)}[measure]
    for i in range(len(acts)):
        assert mat[i, i] == 1.0
        for j in range(len(acts)):
            if i != j:
                assert mat[i, j] == pytest.approx(single(acts[i], acts[j]), abs=1e-10)
    if measure != "pwcca":
        np.testing.assert_array_equal(mat, mat.T)
    # tiny Gram blocks exercise the blocked path
    np.testing.assert_allclose(S.pairwise_similarity(acts, measure, block_bytes=8 * 15**2), mat,
                               atol=1e-12)


def test_pairwise_torch_and_conv_and_layers():
    acts = population(3)
    mat = S.pairwise_similarity(acts)
    np.testing.assert_allclose(S.pairwise_similarity([torch.tensor(a, dtype=torch.float32)
                                                      for a in acts]),
                               S.pairwise_similarity([a.astype(np.float32) for a in acts]),
                               atol=1e-12)
    conv = [np.random.default_rng(i).standard_normal((30, 4, 3, 3)) for i in range(3)]
    out = S.pairwise_layers({"fc": acts, "conv": conv}, conv="positions", max_points=200)
    np.testing.assert_allclose(out["fc"], mat)
    assert out["conv"][0, 1] == pytest.approx(
        S.svcca(conv[0], conv[1], max_points=200).similarity, abs=1e-12)
    assert S.SVCCA().pairwise(acts)[0, 1] == pytest.approx(S.SVCCA().score(acts[0], acts[1]))
    assert S.LinearCKA(debiased=True).score(acts[0], acts[1]) == pytest.approx(
        S.linear_cka(acts[0], acts[1], True))
    assert S.PWCCA(keep=3).score(acts[0], acts[1]) == pytest.approx(S.pwcca(acts[0], acts[1], 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pairwise_cuda_matches_cpu():
    acts = population(4)
    cpu = S.pairwise_similarity(acts)
    gpu = S.pairwise_similarity([torch.tensor(a, device="cuda") for a in acts])
    np.testing.assert_allclose(gpu, cpu, atol=1e-9)


def test_rm():
    s = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.7], [0.6, 0.7, 1.0]])
    assert S.rm(s) == pytest.approx(1 - (0.8 + 0.6 + 0.7) / 3)
    assert S.representational_multiplicity({"a": s, "b": np.eye(3)}) == pytest.approx(
        (S.rm(s) + 1.0) / 2)
    with pytest.raises(ValueError, match="square"):
        S.rm(np.ones((2, 3)))


# ----------------------------------------------------------------- degenerate input

def test_constant_neurons_are_ignored_and_dead_layer_raises():
    a, b = related()
    a_dead = np.hstack([a, np.full((a.shape[0], 3), 5.0)])
    assert S.svcca(a_dead, b).similarity == pytest.approx(S.svcca(a, b).similarity, abs=1e-12)
    assert S.linear_cka(a_dead, b) == pytest.approx(S.linear_cka(a, b), abs=1e-12)
    for f in (S.svcca, S.pwcca, S.linear_cka):
        with pytest.raises(ValueError, match="b has no variance"):
            f(a, np.ones((a.shape[0], 4)))
    with pytest.raises(ValueError, match=r"acts\[1\] has no variance"):
        S.pairwise_similarity([a, np.zeros_like(a)])


def test_bad_values_and_shapes_raise_clear_errors():
    a, b = related()
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="a contains 1 NaN/inf"):
        S.svcca(bad, b)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        S.linear_cka(b, bad)
    with pytest.raises(ValueError, match="same inputs"):
        S.svcca(a, b[:-1])
    with pytest.raises(ValueError, match=r"acts\[2\] has 399 inputs"):
        S.pairwise_similarity([a, a, a[:-1]])
    with pytest.raises(ValueError, match="keep"):
        S.svcca(a, b, keep=0.0)
    with pytest.raises(ValueError, match="keep"):
        S.svcca(a, b, keep=1.5)
    with pytest.raises(ValueError, match="keep"):
        S.svcca(a, b, keep=True)
    with pytest.raises(ValueError, match="measure"):
        S.pairwise_similarity([a, b], measure="cca")
    with pytest.raises(ValueError, match="at least 2 inputs"):
        S.svcca(a[:1], b[:1])
    with pytest.raises(ValueError, match="shape"):
        S.svcca(a[:, :, None], b)
    with pytest.raises(ValueError, match="at least 4 inputs"):
        S.linear_cka(a[:3], b[:3], debiased=True)


def test_fewer_inputs_than_neurons_warns_and_is_defined():
    a, b = rand(20, 50, 1), rand(20, 50, 2)
    with pytest.warns(UserWarning, match="must share at least"):
        res = S.svcca(a, b)
    assert res.dims[0] <= 19 and np.isfinite(res.similarity)
    assert res.coefficients[0] == pytest.approx(1.0, abs=1e-9)


def test_int_keep_is_capped_at_rank():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 3)) @ rng.standard_normal((3, 8))
    res = S.svcca(a, rand(100, 8), keep=6)
    assert res.dims == (3, 6)
    assert S.n_kept(np.array([3.0, 2.0, 1.0, 0.0]), 1.0) == 3
    assert S.n_kept(np.array([1.0, 1.0, 1.0, 1.0]), 0.5) == 2
    assert S.n_kept(np.array([1.0, 1.0, 1.0, 1.0]), 0.51) == 3


def test_subspace_fill_counts_the_forced_canonical_correlations():
    from rmpm.measures.similarity import subspace_fill, svcca_basis
    rng = np.random.default_rng(0)
    n = 21
    a, b = rng.normal(size=(n, 12)), rng.normal(size=(n, 14))
    ka, kb = svcca_basis(a, 1.0).shape[1], svcca_basis(b, 1.0).shape[1]
    fill = subspace_fill([ka, kb], n)
    assert fill == pytest.approx((ka + kb) / (n - 1)) and fill > 1
    # independent count: canonical correlations of the two centred column spaces
    qa = np.linalg.qr(a - a.mean(0))[0]
    qb = np.linalg.qr(b - b.mean(0))[0]
    rho = np.linalg.svd(qa.T @ qb, compute_uv=False)
    assert (rho > 1 - 1e-9).sum() == ka + kb - (n - 1)
    assert subspace_fill([3], 7) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_rows=1 must be >= 2"):
        subspace_fill([1, 1], 1)
