"""How often each verdict rule says "supported" or "partly" when it should not
(false-positive rate under its null), and how often it does when the effect is
there (power against a stated alternative), for the design a profile runs,
under a *family* of nulls shaped like the data.

Each scenario draws ``n_sim`` synthetic data sets of the shape a chapter builds
(the profile's data sets, replicates, factors, models and inputs), runs the
*same* statistics (:mod:`rmpm.analysis.evidence`, whose ``*_core`` functions take a
stack of simulations) and the same rules (the ``*_level`` functions of
:mod:`rmpm.analysis.verdicts`) the book uses, and records the level reached. The
tests check that this vectorised path gives the same verdicts as the
table-in, evidence-out path the chapters run.

**The noise family** (:data:`NOISES`), each a stated departure from i.i.d. noise
that the real data plausibly have. Values are in units of the SD of the factor
effects (C2, C3) or of the residual noise (C1):

* ``iid`` independent normal replicate noise of equal variance (SD 0.5);
* ``unequal_heavy`` per-factor noise SDs spread fourfold (log-spaced, assigned
  to factors at random), Student-t noise with 3 degrees of freedom;
* ``clustered`` factors of one kind (:data:`CLUSTERS`: the seed factors, the
  optimiser's, the regularisers, the data's) share a noise component within each
  block, correlation 0.8;
* ``shared`` the quantities measured on the same models (RM and PM; small-sample
  predictors and their targets) share their noise, correlation 0.8, noise as
  large as the factor effects;
* ``combined`` all of these at once, and each factor's effects alike across data
  sets (correlation 0.7).

Generative models (per simulation; ``block`` a standard-normal shift per
(data set, replicate) and variable, removed by the tests' block centring):

* **C1** ``RM[d, r, f] = block + effect * delta[f] + noise``; null ``effect = 0``
  (every factor moves representations as much as ``both_seeds``); alternative:
  factor effects ``delta`` standard normal, the same in every data set.
* **C3** factor effects on RM (``delta``) and on i.i.d. and OOD PM (``gamma``),
  with ``gamma = rho * delta + sqrt(1 - rho^2) * eta``; null ``rho = 0``, *with*
  factor effects on both.
* **C2** per factor latent accuracy ``zeta``, PM ``pi`` and RM ``delta``; the
  small-sample measures are noisy copies; OOD accuracy is ``zeta - rho (delta +
  pi) / sqrt 2`` and OOD PM ``pi + rho delta``, plus noise. Shared noise enters
  as a "this population trained worse" component: higher RM and PM, lower
  accuracy. Null ``rho = 0``. A second, *confounded* null lets RM track true
  accuracy (correlation 0.5) while small-sample accuracy measures it with noise:
  it shows what the partial test cannot remove, and is reported, not required.
* **C4** each input is *contested* with probability ``q``; on a contested input
  model ``m`` is right with probability ``p_m`` (else it predicts one fixed wrong
  class); elsewhere all models agree. A pair's expected excess disagreement is
  ``2 q p_min (1 - p_max)`` (times ``1 - kappa`` for a pair that shares its
  outcome with probability ``kappa``); ``q`` is set so that the mean over pairs
  is the threshold (null) or the stated alternative. Its family: ``iid`` (``p_m =
  1/2``); ``unequal_heavy`` (``p_m`` spread by heavy-tailed draws, so models
  differ in accuracy); ``clustered`` (models in pairs that share outcomes,
  ``kappa = 0.6``, as seed-sharing models would); ``shared`` (inputs in groups of
  10 near-duplicates that share every model's outcome); ``combined``.

**Caching.** A scenario's simulations depend only on the design, the rules and
simulation versions, the number of simulations, the seed and the test sizes;
their per-simulation p-values are stored under a key of those in
:func:`rmpm.paths.calibration_dir` and reused on every rebuild (the verdict
levels are recomputed from them for any alpha). Each entry records the seconds
it took.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import evidence, verdicts
from .. import paths
from .._checks import check_choice, check_range
from ..atomic import atomic_write
from .factors import FACTOR_KINDS, shares_initialisation
from .profiles import Profile, get_profile

#: Verdict levels whose rate is reported: "at least partly" and "supported".
LEVELS = ("partly or better", "supported")
#: bump when a generative model below changes (cached simulations are keyed by it)
SIM_VERSION = 1
#: simulations per vectorised chunk (bounds memory: chunk x permutations x design)
CHUNK = 50


# ----------------------------------------------------------------------------- design

@dataclass(frozen=True)
class Design:
    """The sizes of a profile's experiment that the tests see."""

    datasets: tuple[str, ...]
    replicates: int
    factors: tuple[str, ...]
    n_models: int          # models of chapter 7's reference population
    n_inputs: int          # i.i.d. test inputs stored per model
    n_classes: int = 10
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()  # factor -> its values (as text)
    n_small: int = 100     # chapter 6's small i.i.d. sample

    @property
    def n_datasets(self) -> int:
        return len(self.datasets)

    @property
    def n_blocks(self) -> int:
        return self.n_datasets * self.replicates

    @property
    def clusters(self) -> np.ndarray:
        """Cluster index of each factor in the ``clustered`` null (:data:`CLUSTERS`;
        a factor in none is a cluster of its own)."""
        of = {f: i for i, group in enumerate(CLUSTERS) for f in group}
        extra = iter(range(len(CLUSTERS), len(CLUSTERS) + len(self.factors)))
        return np.array([of[f] if f in of else next(extra) for f in self.factors])

    @property
    def shared_init(self) -> np.ndarray:
        """Which factors' populations share their models' initial weights."""
        return np.array([shares_initialisation(f) for f in self.factors])

    def replace(self, **changes: Any) -> "Design":
        return dataclasses.replace(self, **changes)

    def spec(self) -> dict[str, Any]:
        return {k: (list(map(list, v)) if k == "values" else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def design(profile: str | Profile) -> Design:
    """The design of ``profile``: its data sets, replicates, factors and their
    values, the reference population's size, the stored inputs and chapter 6's
    small sample."""
    from .finite_samples import default_small_sample
    p = get_profile(profile)
    return Design(tuple(p.datasets), p.replicates, tuple(p.factors), p.reference_seeds,
                  p.n_test or 10000,
                  values=tuple((f, tuple(map(str, v))) for f, v in p.factors.items()),
                  n_small=default_small_sample(p.n_probe))


# ----------------------------------------------------------------------------- noise

#: Factors whose replicate noise the ``clustered`` null lets share a component
#: within a block: those of one kind (:data:`rmpm.analysis.factors.FACTOR_KINDS`).
CLUSTERS = tuple(FACTOR_KINDS.values())


@dataclass(frozen=True)
class Noise:
    """One member of the null family (see the module docstring)."""

    name: str
    description: str
    sd: float = 0.5            # replicate-noise SD (geometric mean over factors)
    spread: float = 1.0        # largest / smallest factor noise SD
    tail_df: float = 0.0       # Student-t degrees of freedom (0: normal)
    cluster_corr: float = 0.0  # shared-initialisation factors' common noise within a block
    shared: float = 0.0        # correlation of the noise of quantities on the same models
    dataset_corr: float = 0.0  # correlation of a factor's effects across data sets


NOISES: dict[str, Noise] = {n.name: n for n in (
    Noise("iid", "independent normal noise of equal variance (SD 0.5 x effect SD)"),
    Noise("unequal_heavy", "factor noise SDs spread fourfold, Student-t tails (3 df)",
          spread=4.0, tail_df=3.0),
    Noise("clustered", "factors of one kind (seeds, optimiser, regularisers, data) share "
          "noise within a block (r = 0.8)", cluster_corr=0.8),
    Noise("shared", "RM and PM (predictors and targets) of the same models share noise "
          "(r = 0.8), noise as large as the effects", sd=1.0, shared=0.8),
    Noise("combined", "all of the above at once, and factor effects alike across data sets "
          "(r = 0.7)", sd=1.0, spread=4.0, tail_df=3.0, cluster_corr=0.8, shared=0.8,
          dataset_corr=0.7),
)}


@dataclass(frozen=True)
class ModelNoise:
    """One member of C4's null family: how the reference models and inputs depart
    from exchangeable models and independent inputs."""

    name: str
    description: str
    spread: float = 0.0        # SD (t, 3 df) of the models' right-probability offsets
    kappa: float = 0.0         # models in pairs sharing their outcome with this probability
    input_groups: int = 1      # inputs in groups of this many sharing every model's outcome


C4_NOISES: dict[str, ModelNoise] = {n.name: n for n in (
    ModelNoise("iid", "exchangeable models, independent inputs"),
    ModelNoise("unequal_heavy", "models of unequal accuracy (heavy-tailed offsets)", spread=0.15),
    ModelNoise("clustered", "models in pairs that share outcomes (kappa = 0.6)", kappa=0.6),
    ModelNoise("shared", "inputs in groups of 10 near-duplicates sharing outcomes",
               input_groups=10),
    ModelNoise("combined", "all of the above at once", spread=0.15, kappa=0.6, input_groups=10),
)}


def _unit(rng: np.random.Generator, nz: Noise, shape) -> np.ndarray:
    """Unit-variance draws: normal, or Student-t scaled to variance 1."""
    if nz.tail_df:
        return rng.standard_t(nz.tail_df, shape) * np.sqrt((nz.tail_df - 2) / nz.tail_df)
    return rng.standard_normal(shape)


def _mixed(rng, nz: Noise, shape, signs: np.ndarray) -> np.ndarray:
    """(k, *shape) unit-variance draws of k variables sharing a component with
    correlation ``nz.shared`` (entering variable i with sign ``signs[i]``)."""
    k = len(signs)
    own = _unit(rng, nz, (k, *shape))
    common = _unit(rng, nz, (1, *shape)) * signs.reshape(k, *[1] * len(shape))
    return np.sqrt(1 - nz.shared) * own + np.sqrt(nz.shared) * common


def draw_noise(rng: np.random.Generator, d: Design, nz: Noise, n: int,
               signs=(1.0,)) -> np.ndarray:
    """Replicate noise ``(k, n, D, R, F)`` of ``k = len(signs)`` variables measured
    on the same models (see :data:`NOISES`)."""
    signs = np.asarray(signs, dtype=float)
    nf = len(d.factors)
    shape = (n, d.n_datasets, d.replicates, nf)
    e = _mixed(rng, nz, shape, signs)
    if nz.cluster_corr:
        ids = d.clusters
        c = _mixed(rng, nz, shape[:-1] + (ids.max() + 1,), signs)[..., ids]
        in_cluster = np.bincount(ids)[ids] > 1
        cc = nz.cluster_corr
        e = np.where(in_cluster, np.sqrt(1 - cc) * e + np.sqrt(cc) * c, e)
    sds = np.exp(np.linspace(-0.5, 0.5, nf) * np.log(nz.spread))
    sds = rng.permuted(np.broadcast_to(sds, (n, nf)), axis=1)[:, None, None, :]
    return nz.sd * sds * e


def _effects(rng, d: Design, nz: Noise, n: int, k: int = 1) -> np.ndarray:
    """Standard-normal factor effects ``(k, n, D, 1, F)``, correlated across data
    sets by ``nz.dataset_corr``."""
    nf, c = len(d.factors), nz.dataset_corr
    own = rng.standard_normal((k, n, d.n_datasets, 1, nf))
    common = rng.standard_normal((k, n, 1, 1, nf))
    return np.sqrt(1 - c) * own + np.sqrt(c) * common


def _blocks(rng, d: Design, n: int, k: int) -> np.ndarray:
    return rng.standard_normal((k, n, d.n_datasets, d.replicates, 1))


def _noise_of(noise: str | Noise) -> Noise:
    if isinstance(noise, Noise):
        return noise
    check_choice("noise", noise, NOISES)
    return NOISES[noise]


# ----------------------------------------------------------------------------- generators

def draw_c1(d: Design, rng: np.random.Generator, n: int, noise: str | Noise = "iid",
            effect: float = 0.0) -> dict[str, np.ndarray]:
    """``{"rm_adj": (n, D, R, F)}``; residual noise of unit (geometric-mean) SD."""
    nz = _noise_of(noise)
    delta = rng.standard_normal((n, 1, 1, len(d.factors)))  # the same in every data set
    e = draw_noise(rng, d, nz, n)[0] / nz.sd
    return {"rm_adj": 0.5 + 0.05 * (_blocks(rng, d, n, 1)[0] + effect * delta + e)}


def draw_c3(d: Design, rng: np.random.Generator, n: int, noise: str | Noise = "iid",
            rho: float = 0.0) -> dict[str, np.ndarray]:
    nz = _noise_of(noise)
    delta, eta = _effects(rng, d, nz, n, 1)[0], _effects(rng, d, nz, n, 2)
    gamma = rho * delta + np.sqrt(1 - rho ** 2) * eta
    e = draw_noise(rng, d, nz, n, (1.0, 1.0, 1.0))
    b = _blocks(rng, d, n, 3)
    return {"rm_adj": delta + b[0] + e[0], "pm:iid": gamma[0] + b[1] + e[1],
            "pm_ood": gamma[1] + b[2] + e[2]}


C2_VARIABLES = ("acc_small", "pm_small", "rm_small", "acc_ood_rest", "pm_ood_rest")


def draw_c2(d: Design, rng: np.random.Generator, n: int, noise: str | Noise = "iid",
            rho: float = 0.0, confound: float = 0.0) -> dict[str, np.ndarray]:
    nz = _noise_of(noise)
    zeta, pi, delta0 = _effects(rng, d, nz, n, 3)
    delta = confound * zeta + np.sqrt(1 - confound ** 2) * delta0
    # a population that trained worse: lower accuracy, higher PM and RM
    e = draw_noise(rng, d, nz, n, (-1.0, 1.0, 1.0, -1.0, 1.0))
    b = _blocks(rng, d, n, 5)
    latent = (zeta, pi, delta, zeta - rho * (delta + pi) / np.sqrt(2), pi + rho * delta)
    return {name: latent[i] + b[i] + e[i] for i, name in enumerate(C2_VARIABLES)}


def as_table(d: Design, arrays: dict[str, np.ndarray], i: int = 0) -> pd.DataFrame:
    """Simulation ``i`` of :func:`draw_c1` & co. as the table a chapter builds."""
    t = pd.DataFrame([{"dataset": ds, "factor": f, "replicate": r}
                      for ds in d.datasets for r in range(d.replicates) for f in d.factors])
    for k, v in arrays.items():
        t[k] = v[i].reshape(-1)
    return t


def simulate_c1(d: Design, rng: np.random.Generator, effect: float = 0.0,
                noise: str | Noise = "iid") -> pd.DataFrame:
    return as_table(d, draw_c1(d, rng, 1, noise, effect))


def simulate_c3(d: Design, rng: np.random.Generator, rho: float = 0.0,
                noise: str | Noise = "iid") -> pd.DataFrame:
    return as_table(d, draw_c3(d, rng, 1, noise, rho))


def simulate_c2(d: Design, rng: np.random.Generator, rho: float = 0.0,
                noise: str | Noise = "iid", confound: float = 0.0) -> pd.DataFrame:
    return as_table(d, draw_c2(d, rng, 1, noise, rho, confound))


def _c4_setup(d: Design, rng, mn: ModelNoise, excess: float) -> tuple[np.ndarray, float]:
    """The models' right-probabilities on contested inputs and the contest
    probability ``q`` that gives mean pairwise expected excess ``excess``."""
    m = d.n_models
    p = 0.5 + (mn.spread * rng.standard_t(3, m) if mn.spread else np.zeros(m))
    p = np.clip(p, 0.05, 0.95)
    # model 2i+1 copies model 2i's outcome with probability kappa: its marginal
    marginal = p.copy()
    marginal[1::2] = mn.kappa * p[0:m - 1:2][:len(p[1::2])] + (1 - mn.kappa) * p[1::2]
    ia, ib = np.triu_indices(m, 1)
    paired = (ia % 2 == 0) & (ib == ia + 1)  # (0, 1), (2, 3), ...

    def excess_of(a, b):  # 2 p_min (1 - p_max), independent outcomes
        return 2 * np.minimum(a, b) * (1 - np.maximum(a, b))
    per_pair = np.where(paired, (1 - mn.kappa) * excess_of(p[ia], p[ib]),
                        excess_of(marginal[ia], marginal[ib]))
    return p, min(1.0, excess / per_pair.mean())


def _c4_noise(noise: str | ModelNoise) -> ModelNoise:
    if isinstance(noise, ModelNoise):
        return noise
    check_choice("noise", noise, C4_NOISES)
    return C4_NOISES[noise]


def _c4_predictions(d: Design, rng, mn: ModelNoise, p: np.ndarray, q: float,
                    y: np.ndarray) -> np.ndarray:
    """(models, inputs, classes) probabilities of models with right-probabilities
    ``p`` on inputs contested with probability ``q``, labels ``y``."""
    m, n, k = d.n_models, d.n_inputs, d.n_classes
    g = mn.input_groups
    n_units = -(-n // g)
    unit = np.repeat(np.arange(n_units), g)[:n]       # inputs of a unit share outcomes
    wrong = (y + rng.integers(1, k, n)) % k
    contested = (rng.random(n_units) < q)[unit]
    easy_right = (rng.random(n_units) < 0.9)[unit]
    right = rng.random((m, n_units)) < p[:, None]
    if mn.kappa:
        copy = rng.random((m, n_units)) < mn.kappa
        for j in range(1, m, 2):
            right[j] = np.where(copy[j], right[j - 1], right[j])
    right = np.where(contested[None], right[:, unit], easy_right[None])
    pred = np.where(right, y[None], wrong[None])
    probs = np.full((m, n, k), 0.02 / (k - 1))
    np.put_along_axis(probs, pred[..., None], 0.98, axis=2)
    return probs


def simulate_c4(d: Design, rng: np.random.Generator, excess: float,
                noise: str | ModelNoise = "iid", n_sets: int = 1):
    """``(probs_1, ..., probs_n_sets, labels)``: the same population of models on
    ``n_sets`` input sets sharing their labels (i.i.d. and corrupted copies of the
    same inputs), each ``(models, inputs, classes)`` with expected mean pairwise
    excess disagreement ``excess`` (see the module docstring)."""
    mn = _c4_noise(noise)
    p, q = _c4_setup(d, rng, mn, excess)
    y = rng.integers(0, d.n_classes, d.n_inputs)
    return (*(_c4_predictions(d, rng, mn, p, q, y) for _ in range(n_sets)), y)


# ----------------------------------------------------------------------------- the tests, vectorised

def _chunks(n: int):
    for s in range(0, n, CHUNK):
        yield slice(s, min(n, s + CHUNK))


def _by_dataset(d: Design, arrays: dict[str, np.ndarray], cols, sl) -> list[list[np.ndarray]]:
    return [[arrays[c][sl, i] for c in cols] for i in range(d.n_datasets)]


def evidence_c1(d: Design, arrays: dict[str, np.ndarray], kw: dict, seed: int) -> dict[str, np.ndarray]:
    """What :func:`rmpm.analysis.evidence.c1_evidence` computes, for every simulation."""
    v = arrays["rm_adj"]
    n = v.shape[0]
    contrasts, _ = evidence.c1_contrasts(v.reshape(n, d.n_blocks, -1), d.factors)
    flips, _ = evidence.sign_flips(d.n_blocks, evidence.MAX_FLIPS, seed)
    block_ds = np.repeat(np.arange(d.n_datasets), d.replicates)
    p_b, p_d = np.empty(n), np.empty(n)
    for sl in _chunks(n):
        core = evidence.c1_core(contrasts[sl], block_ds, flips)
        p_b[sl], p_d[sl] = core.p_any, core.p_consistent
    return {"p_blocks": p_b, "p_datasets": p_d}


def _associations(d: Design, arrays, tests, kw: dict, seed: int) -> dict[str, np.ndarray]:
    """p-values and leave-one-out directions of ``tests`` = [(x, y, control,
    alternative, seed offset)], as :func:`rmpm.analysis.evidence.association`."""
    n = next(iter(arrays.values())).shape[0]
    nf = len(d.factors)
    p = np.empty((n, len(tests)))
    direction = np.empty((n, len(tests)), dtype=bool)
    for j, (x, y, z, alt, off) in enumerate(tests):
        perms = evidence.permutations(nf, kw["n_perm"], np.random.default_rng(seed + off))
        cols = [x, y] + ([z] if z else [])
        for sl in _chunks(n):
            core = evidence.association_core(_by_dataset(d, arrays, cols, sl), alt, perms)
            p[sl, j] = core.p_value
            direction[sl, j] = evidence.direction_holds_core(core, alt)
    return {"p": p, "direction": direction}


def evidence_c3(d: Design, arrays, kw: dict, seed: int) -> dict[str, np.ndarray]:
    """What :func:`rmpm.analysis.evidence.c3_evidence` tests, for every simulation."""
    return _associations(d, arrays, [("rm_adj", y, None, "greater", i)
                                     for i, (_, y) in enumerate(evidence.C3_TESTS)], kw, seed)


def evidence_c2(d: Design, arrays, kw: dict, seed: int) -> dict[str, np.ndarray]:
    """What :func:`rmpm.analysis.evidence.c2_evidence` tests, for every simulation."""
    return _associations(d, arrays, [(x, y, z, alt, i) for i, (_, x, y, z, alt)
                                     in enumerate(evidence.C2_PREDICTIONS)], kw, seed)


def evidence_c4(d: Design, rng, n: int, noise: str, excess: float, kw: dict,
                seed: int) -> dict[str, np.ndarray]:
    p = np.empty((n, 2))
    for i in range(n):
        pi, po, y = simulate_c4(d, rng, excess, noise, n_sets=2)
        ev = evidence.c4_evidence(pi, y, po, acc_range=0.0, threshold=kw["threshold"],
                                   n_boot=kw["n_boot"], seed=seed + i)
        p[i] = ev.iid.p_value, ev.ood.p_value
    return {"p": p}


def levels(claim: str, out: dict[str, np.ndarray], d: Design, alpha: float) -> np.ndarray:
    """The level code (0, 1, 2) each simulation reaches, by the book's rules."""
    if claim == "C1":
        return verdicts.c1_level(out["p_blocks"], out["p_datasets"], d.n_datasets, alpha)
    if claim == "C2":
        return verdicts.c2_level(out["p"], out["direction"], alpha)
    if claim == "C3":
        return verdicts.c3_level(out["p"], out["direction"], d.n_datasets, alpha)
    return verdicts.c4_level(out["p"], alpha)


# ----------------------------------------------------------------------------- scenarios

@dataclass(frozen=True)
class Scenario:
    claim: str
    hypothesis: str        # "null", "null (confounded)" or "alternative"
    noise: str             # a key of NOISES (C4: of C4_NOISES)
    description: str
    params: dict = field(default_factory=dict)  # effect / rho / confound / excess
    required: bool = True  # a null whose false-positive rate must stay <= alpha

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.claim}/{self.hypothesis}/{self.noise}/{extra}"

    @property
    def noise_description(self) -> str:
        return (C4_NOISES if self.claim == "C4" else NOISES)[self.noise].description

    def simulate(self, d: Design, n_sim: int, seed: int, kw: dict) -> dict[str, np.ndarray]:
        """Per-simulation outputs of the claim's statistics (p-values, directions)."""
        rng = np.random.default_rng([seed, zlib.crc32(self.key.encode())])
        test_seed = int(rng.integers(2 ** 31))
        if self.claim == "C4":
            return evidence_c4(d, rng, n_sim, self.noise, self.params["excess"], kw, test_seed)
        draw = {"C1": draw_c1, "C2": draw_c2, "C3": draw_c3}[self.claim]
        run = {"C1": evidence_c1, "C2": evidence_c2, "C3": evidence_c3}[self.claim]
        return run(d, draw(d, rng, n_sim, self.noise, **self.params), kw, test_seed)


#: Stated alternatives (effect sizes) of the power columns; the Claims page also
#: gives the power at the effect a build observed.
POWER_EFFECTS = {"C1": 1.0, "C2": 0.7, "C3": 0.7, "C4": 0.05}
#: the noise models the power is computed under
POWER_NOISES = ("iid", "combined")
_EFFECT = {"C1": "effect", "C2": "rho", "C3": "rho", "C4": "excess"}


def scenarios(alternatives: dict[str, float] | None = None, threshold: float = 0.01,
              noises: tuple[str, ...] | None = None) -> list[Scenario]:
    """Every scenario: each claim's null under every member of its noise family
    (required), C2's confounded null (reported), and each claim's alternative
    under :data:`POWER_NOISES`."""
    alt = {**POWER_EFFECTS, **(alternatives or {})}
    names = tuple(NOISES) if noises is None else noises
    out = []
    what = {"C1": "every factor moves representations as much as a fresh seed (both_seeds)",
            "C2": "small-sample RM/PM unrelated to OOD targets beyond the baseline",
            "C3": "factor effects on RM and on PM independent (rho = 0)",
            "C4": f"expected excess disagreement = threshold ({threshold:g})"}
    alt_what = {"C1": "factor-effect SD = {:g} x residual SD, alike in every data set",
                "C2": "partial association rho = {:g} per prediction",
                "C3": "factor effects on RM and PM correlated, rho = {:g}",
                "C4": "expected excess disagreement = {:g}"}
    for c in ("C1", "C2", "C3", "C4"):
        fam = C4_NOISES if c == "C4" else NOISES
        null_params = {"excess": threshold} if c == "C4" else {}
        for nm in names:
            if nm in fam:
                out.append(Scenario(c, "null", nm, what[c], null_params))
        if c == "C2":
            out.append(Scenario(c, "null (confounded)", "iid", "RM tracks true accuracy (r = 0.5); "
                                "small-sample accuracy measures it with noise",
                                {"confound": 0.5}, required=False))
        for nm in POWER_NOISES:
            if nm in names:
                out.append(Scenario(c, "alternative", nm, alt_what[c].format(alt[c]),
                                    {_EFFECT[c]: float(alt[c])}, required=False))
    return out


def scenario_table(sc: list[Scenario] | None = None) -> pd.DataFrame:
    """The scenarios as a table: claim, hypothesis, noise, what is simulated."""
    sc = scenarios() if sc is None else sc
    return pd.DataFrame([{"claim": s.claim, "hypothesis": s.hypothesis, "noise": s.noise,
                          "null or effect": s.description, "noise model": s.noise_description,
                          "required": s.required and s.hypothesis == "null"} for s in sc])


# ----------------------------------------------------------------------------- cache

def _cache_key(d: Design, sc: Scenario, n_sim: int, seed: int, kw: dict) -> str:
    from ..pipeline.recipe import content_key
    return content_key({"sim": SIM_VERSION, "rules": verdicts.RULES_VERSION, "design": d.spec(),
                        "scenario": sc.key, "n_sim": n_sim, "seed": seed,
                        "tests": {k: kw[k] for k in ("n_perm", "n_boot", "threshold")}})


#: a cached scenario's file: the SHA-256 (hex) of the rest, a newline, then an .npz
CACHE_SUFFIX = ".sim"


def _load(path) -> tuple[dict[str, np.ndarray], float] | None:
    """A cached scenario, or None when it is missing or damaged (then it is recomputed).
    It carries its SHA-256 in its first line: a flipped bit in an .npz's zip header or
    in a member's name reads back without an error, with other names or values."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None  # missing: simulate it
    want, _, data = raw.partition(b"\n")
    if hashlib.sha256(data).hexdigest().encode() != want:
        warnings.warn(f"cached calibration {path} is damaged (its SHA-256 does not match); "
                      "simulating it again", RuntimeWarning, stacklevel=3)
        return None
    with np.load(io.BytesIO(data)) as z:
        out = {k: z[k] for k in z.files}
    seconds = float(out.pop("_seconds", np.nan))
    return out, seconds


def _save(path, out: dict[str, np.ndarray], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, _seconds=np.float64(seconds), **out)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(hashlib.sha256(data).hexdigest().encode() + b"\n" + data))


def _cache_path(d: Design, sc: Scenario, n_sim: int, seed: int, kw: dict):
    return paths.calibration_dir() / f"{_cache_key(d, sc, n_sim, seed, kw)}{CACHE_SUFFIX}"


def _simulate(d: Design, sc: Scenario, n_sim: int, seed: int, kw: dict
              ) -> tuple[dict[str, np.ndarray], float]:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn
    t0 = time.perf_counter()
    # thousands of small matrix products: a multi-threaded BLAS only adds overhead
    # (about 100x on a busy 2-core machine)
    with threadpool_limits(1):
        out = sc.simulate(d, n_sim, seed, kw)
    return out, time.perf_counter() - t0


#: the kind of a calibration cache entry's claim (rmpm.pipeline.locks), whose locks
#: live in the cache folder's own ``locks/``
CLAIM_KIND = "calibration"


def ensure_simulated(d: Design, scs: list[Scenario], n_sim: int, seed: int, kw: dict,
                     progress: Any = None) -> set[str]:
    """Cache the simulations of every scenario of ``scs`` that is not cached yet, each
    under its claim (:func:`rmpm.pipeline.locks.work_through`), as store entries are:
    one another process is simulating is left for the end, then waited for, so two
    builds at once share the scenarios and simulate each once. A damaged cache file
    is simulated again. ``progress`` (a tqdm bar) advances by one per scenario that is
    cached by the end of its turn. Returns the keys simulated here."""
    from ..pipeline.locks import work_through
    root = paths.calibration_dir()
    todo = {}
    for sc in scs:
        path = _cache_path(d, sc, n_sim, seed, kw)
        if path.exists() and _load(path) is None:  # damaged (it warned): simulate it again
            path.unlink(missing_ok=True)
        todo[path.name[:-len(CACHE_SUFFIX)]] = (sc, path)
    here: set[str] = set()

    def done(k):
        return todo[k][1].is_file()

    def compute(keys):
        for k in keys:
            sc, path = todo[k]
            out, seconds = _simulate(d, sc, n_sim, seed, kw)
            _save(path, out, seconds)
            here.add(k)

    deferred = []
    for k in todo:  # one claim at a time: a concurrent build takes the next one
        left = work_through([k], str, root, CLAIM_KIND, done, compute)[1]
        deferred += left
        if progress is not None and not left:
            progress.update(1)
    for k in deferred:
        work_through([k], str, root, CLAIM_KIND, done, compute, wait=True)
        if progress is not None:
            progress.update(1)
    return here


def simulated(d: Design, sc: Scenario, n_sim: int, seed: int, kw: dict,
              cache: bool = True) -> tuple[dict[str, np.ndarray], float, bool]:
    """A scenario's per-simulation outputs, the seconds they took to compute, and
    whether they came from the cache (computed by an earlier run, or by another
    process while this one waited for its claim)."""
    if not cache:
        return (*_simulate(d, sc, n_sim, seed, kw), False)
    here = ensure_simulated(d, [sc], n_sim, seed, kw)
    got = _load(_cache_path(d, sc, n_sim, seed, kw))
    if got is None:  # damaged again since: simulate without the cache
        return (*_simulate(d, sc, n_sim, seed, kw), False)
    return got[0], got[1], not here


# ----------------------------------------------------------------------------- rates

def calibrate(profile: str | Profile | Design, n_sim: int = 500, seed: int = 0,
              alpha: float = evidence.ALPHA, n_perm: int = 500, n_boot: int = 200,
              threshold: float = 0.01, claims_: tuple[str, ...] = ("C1", "C2", "C3", "C4"),
              alternatives: dict[str, float] | None = None,
              hypotheses: tuple[str, ...] | None = None, noises: tuple[str, ...] | None = None,
              cache: bool = True, progress: bool = False) -> pd.DataFrame:
    """Rate at which each verdict level is reached, per claim and scenario.

    Columns: claim, hypothesis, noise, description, level, rate, se (binomial
    standard error), n_sim, required (a null that must stay at or below
    ``alpha``), seconds (to compute the scenario's simulations), cached (whether
    they were reused). Under a null the rate is the false-positive rate; under the
    alternative, the power. ``hypotheses`` (e.g. ``("alternative",)``) and
    ``noises`` limit the scenarios run. ``n_perm`` and ``n_boot`` are those of each
    simulated test (smaller than the book's, which only coarsens the p-values a
    little); within a scenario every simulation uses the same permutations.
    """
    check_range("n_sim", n_sim, 1, integer=True)
    check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    check_range("n_perm", n_perm, 1, integer=True)
    check_range("n_boot", n_boot, 1, integer=True)
    for c in claims_:
        check_choice("claims_", c, ("C1", "C2", "C3", "C4"))
    for nm in noises or ():
        check_choice("noises", nm, NOISES)
    d = profile if isinstance(profile, Design) else design(profile)
    kw = {"n_perm": n_perm, "n_boot": n_boot, "threshold": threshold}
    chosen = [s for s in scenarios(alternatives, threshold, noises) if s.claim in claims_
              and (hypotheses is None or s.hypothesis in hypotheses)]
    bar = None
    if progress:  # plain tqdm, imported only for the CLI: tqdm.auto warns in kernels
        from tqdm import tqdm
        bar = tqdm(total=len(chosen), desc="calibrating")
    try:  # a stopped run closes its bar first, so the CLI's last line starts a line
        rows = _rows(d, chosen, n_sim, seed, kw, cache, alpha, bar)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(rows)


def _rows(d: Design, chosen: list, n_sim: int, seed: int, kw: dict, cache: bool,
          alpha: float, bar) -> list[dict]:
    """Every chosen scenario's rates at both levels, simulated or read from the cache."""
    here = ensure_simulated(d, chosen, n_sim, seed, kw, bar) if cache else set()
    rows = []
    for sc in chosen:
        if cache:
            path = _cache_path(d, sc, n_sim, seed, kw)
            got = _load(path)
            out, seconds = got if got is not None else _simulate(d, sc, n_sim, seed, kw)
            was_cached = got is not None and path.name[:-len(CACHE_SUFFIX)] not in here
        else:
            out, seconds, was_cached = simulated(d, sc, n_sim, seed, kw, cache)
            if bar is not None:
                bar.update(1)
        lv = levels(sc.claim, out, d, alpha)
        for name, reached in (("partly or better", lv >= 1), ("supported", lv >= 2)):
            rate = float(reached.mean())
            rows.append({"claim": sc.claim, "hypothesis": sc.hypothesis, "noise": sc.noise,
                         "description": sc.description, "level": name, "rate": rate,
                         "se": float(np.sqrt(max(rate * (1 - rate), 1e-12) / n_sim)),
                         "n_sim": n_sim, "required": sc.required and sc.hypothesis == "null",
                         "seconds": seconds, "cached": was_cached})
    return rows


def level_label(claim: str, level: str) -> str:
    """C4's levels are about its premise (see :mod:`rmpm.analysis.verdicts`)."""
    if claim != "C4":
        return level
    return {"partly or better": "premise holds at least in part",
            "supported": "premise holds"}[level]


def failures(cal: pd.DataFrame, alpha: float = evidence.ALPHA) -> pd.DataFrame:
    """Required rows whose false-positive rate exceeds alpha by more than 2 SE."""
    return cal[cal["required"] & (cal["rate"] > alpha + 2 * cal["se"])]


def summary_table(cal: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and level: the false-positive rate under each null of
    the family, and the power under each alternative."""
    out = []
    for (claim, level), g in cal.groupby(["claim", "level"], sort=False):
        row = {"claim": claim, "level": level_label(claim, level)}
        for _, r in g.iterrows():
            if r["hypothesis"] == "alternative":
                row[f"power ({r['noise']})"] = r["rate"]
                row["alternative"] = r["description"]
            elif r["hypothesis"] == "null":
                row[f"FPR {r['noise']}"] = r["rate"]
            else:
                row[f"FPR {r['noise']}, {r['hypothesis'][6:-1]} (not required)"] = r["rate"]
        out.append(row)
    return pd.DataFrame(out)


def cost(cal: pd.DataFrame) -> dict[str, float]:
    """Seconds the scenarios took to simulate, and how many were reused from the cache."""
    per = cal.drop_duplicates(["claim", "hypothesis", "noise", "description"])
    return {"scenarios": int(len(per)), "cached": int(per["cached"].sum()),
            "seconds_to_compute": float(per["seconds"].sum()),
            "seconds_computed_now": float(per.loc[~per["cached"], "seconds"].sum())}


def summary_with_power(profile: str | Profile | Design, observed: dict[str, float], n_sim: int,
                       seed: int = 0, alpha: float = evidence.ALPHA
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """What the Claims page shows: the calibration of ``profile``'s design (``cal``),
    its :func:`summary_table` and, for the claims with an ``observed`` effect (see
    :func:`rmpm.analysis.verdicts.observed_effects`), the power at that effect under the
    i.i.d. and the combined noise (simulated with ``seed + 1``). Returns
    ``(cal, summary, power)``."""
    cal = calibrate(profile, n_sim=n_sim, seed=seed, alpha=alpha)
    summary = summary_table(cal)
    if not observed:
        return cal, summary, None
    power = calibrate(profile, n_sim=n_sim, seed=seed + 1, alpha=alpha, alternatives=observed,
                      claims_=tuple(observed), hypotheses=("alternative",))
    for nm in POWER_NOISES:
        po = power[power["noise"] == nm].set_index(["claim", "level"])["rate"]
        summary[f"power at this build's effect ({nm})"] = [
            po.get((c, lv)) for c, lv in zip(cal.drop_duplicates(["claim", "level"])["claim"],
                                             cal.drop_duplicates(["claim", "level"])["level"])]
    summary["this build's effect"] = [observed.get(c) for c in summary["claim"]]
    return cal, summary, power


__all__ = ["Design", "design", "Noise", "NOISES", "ModelNoise", "C4_NOISES", "draw_noise",
           "draw_c1", "draw_c2", "draw_c3", "as_table", "simulate_c1", "simulate_c2",
           "simulate_c3", "simulate_c4", "evidence_c1", "evidence_c2", "evidence_c3",
           "evidence_c4", "levels", "Scenario", "scenarios", "scenario_table", "POWER_EFFECTS",
           "POWER_NOISES", "calibrate", "failures", "summary_table", "summary_with_power",
           "cost", "level_label", "LEVELS", "SIM_VERSION", "simulated"]
