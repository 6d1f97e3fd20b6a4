"""How often each verdict rule says "supported" or "partly" when it should not
(false-positive rate under its null), and how often it does when the effect is
there (power against a stated alternative), for the design a profile runs.

Each simulation draws a synthetic table of the shape a chapter builds (same data
sets, replicates, factors, models and inputs as the profile), passes it through
the *same* evidence functions (:mod:`rmpm.book.decisions`) and verdict rules
(:mod:`rmpm.book.claims`) the book uses, and records the verdict. So the rates are
those of the code that made the book, not of a re-implementation.

The generative models are ours and deliberately simple; each is stated in
:data:`SCENARIOS` and on the Claims page:

* **C1**: ``RM[d, r, f] = block[d, r] + effect * delta[f] + noise``, ``delta`` and
  the noise standard normal. Null: ``effect = 0`` (factors exchangeable).
* **C3**: factor effects on RM (``delta``) and on PM (``gamma``) with correlation
  ``rho``, plus block effects and replicate noise (SD ``noise``). Null:
  ``rho = 0`` *with* factor effects on both, the hard case for a test that
  treated populations rather than factors as units.
* **C2**: per factor, latent accuracy ``zeta``, PM ``pi`` and RM ``delta``; the
  small-sample measures are noisy copies; OOD accuracy is ``zeta - rho (delta +
  pi)/sqrt2 + noise`` and OOD PM ``pi + rho delta + noise``. Null: ``rho = 0``.
  A second, *confounded* null lets RM track true accuracy (correlation 0.5)
  while small-sample accuracy measures it with error: it shows what the partial
  test cannot remove (residual confounding), and is reported, not required to
  pass.
* **C4**: each input is *contested* with probability ``q``; on a contested input
  each model is right with probability 1/2 (else it predicts one fixed wrong
  class); elsewhere all models agree. Every pair then has expected excess
  disagreement ``q/2``; the null sets ``q/2`` to the threshold.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import claims, decisions
from .._checks import check_range
from .profiles import Profile, get_profile

#: Verdict levels whose rate is reported: "at least partly" and "supported".
LEVELS = ("partly or better", "supported")


@dataclass(frozen=True)
class Design:
    """The sizes of a profile's experiment that the tests see."""

    datasets: tuple[str, ...]
    replicates: int
    factors: tuple[str, ...]
    n_models: int          # models of chapter 7's reference population
    n_inputs: int          # i.i.d. test inputs stored per model
    n_classes: int = 10

    @property
    def n_datasets(self) -> int:
        return len(self.datasets)


def design(profile: str | Profile) -> Design:
    p = get_profile(profile)
    return Design(tuple(p.datasets), p.replicates, tuple(p.factors), p.reference_seeds,
                  p.n_test or 10000)


def _skeleton(d: Design) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """The table's key columns, and per row: data set, factor and block index."""
    t = pd.DataFrame([{"dataset": ds, "factor": f, "replicate": r}
                      for ds in d.datasets for r in range(d.replicates) for f in d.factors])
    nf, nr = len(d.factors), d.replicates
    di = np.repeat(np.arange(d.n_datasets), nr * nf)
    fi = np.tile(np.arange(nf), d.n_datasets * nr)
    bi = np.repeat(np.arange(d.n_datasets * nr), nf)
    return t, di, fi, bi


def _effects(rng: np.random.Generator, d: Design, di, fi, shared: np.ndarray | None = None):
    """A standard-normal effect per (data set, factor) spread onto the rows (or
    ``shared``, an (n_datasets, factors) array)."""
    e = rng.normal(size=(d.n_datasets, len(d.factors))) if shared is None else shared
    return e[di, fi]


def simulate_c1(d: Design, rng: np.random.Generator, effect: float = 0.0) -> pd.DataFrame:
    t, di, fi, bi = _skeleton(d)
    delta = np.broadcast_to(rng.normal(size=len(d.factors)), (d.n_datasets, len(d.factors)))
    block = rng.normal(size=bi.max() + 1)[bi]
    t["rm_adj"] = 0.5 + 0.05 * (block + effect * _effects(rng, d, di, fi, delta)
                                + rng.normal(size=len(t)))
    return t


def _correlated(rng, d: Design, base: np.ndarray, rho: float) -> np.ndarray:
    return rho * base + np.sqrt(1 - rho ** 2) * rng.normal(size=base.shape)


def simulate_c3(d: Design, rng: np.random.Generator, rho: float = 0.0,
                noise: float = 0.5) -> pd.DataFrame:
    t, di, fi, bi = _skeleton(d)
    nb, shape = bi.max() + 1, (d.n_datasets, len(d.factors))
    delta = rng.normal(size=shape)

    def noisy(effect):
        return effect[di, fi] + rng.normal(size=nb)[bi] + noise * rng.normal(size=len(t))
    t["rm_adj"] = noisy(delta)
    t["pm:iid"] = noisy(_correlated(rng, d, delta, rho))
    t["pm_ood"] = noisy(_correlated(rng, d, delta, rho))
    return t


def simulate_c2(d: Design, rng: np.random.Generator, rho: float = 0.0, noise: float = 0.5,
                confound: float = 0.0) -> pd.DataFrame:
    t, di, fi, bi = _skeleton(d)
    nb, shape = bi.max() + 1, (d.n_datasets, len(d.factors))
    zeta, pi = rng.normal(size=shape), rng.normal(size=shape)
    delta = _correlated(rng, d, zeta, confound)

    def noisy(effect):
        return effect[di, fi] + rng.normal(size=nb)[bi] + noise * rng.normal(size=len(t))
    t["acc_small"], t["pm_small"], t["rm_small"] = noisy(zeta), noisy(pi), noisy(delta)
    t["acc_ood_rest"] = noisy(zeta - rho * (delta + pi) / np.sqrt(2))
    t["pm_ood_rest"] = noisy(pi + rho * delta)
    return t


def simulate_c4(d: Design, rng: np.random.Generator, excess: float) -> tuple[np.ndarray, np.ndarray]:
    """(probs (models, inputs, classes), labels) with expected pairwise excess
    disagreement ``excess`` (see the module docstring)."""
    m, n, k = d.n_models, d.n_inputs, d.n_classes
    y = rng.integers(0, k, n)
    wrong = (y + rng.integers(1, k, n)) % k
    contested = rng.random(n) < min(1.0, 2 * excess)
    easy_right = rng.random(n) < 0.9
    right = np.where(contested[None], rng.random((m, n)) < 0.5, easy_right[None])
    pred = np.where(right, y[None], wrong[None])
    probs = np.full((m, n, k), 0.02 / (k - 1))
    np.put_along_axis(probs, pred[..., None], 0.98, axis=2)
    return probs, y


@dataclass(frozen=True)
class Scenario:
    claim: str
    hypothesis: str        # "null" or "alternative"
    description: str
    run: Callable[[Design, np.random.Generator, dict], str]   # -> verdict
    required: bool = True  # a null whose false-positive rate must stay <= alpha


def _c1(effect):
    def run(d, rng, kw):
        ev = decisions.c1_evidence(simulate_c1(d, rng, effect), n_perm=kw["n_perm"],
                                   seed=int(rng.integers(2**31)))
        return claims.verdict_c1(ev, kw["alpha"]).verdict
    return run


def _c3(rho):
    def run(d, rng, kw):
        # the verdict reads p-values only; the interval (n_boot) is not simulated
        ev = decisions.c3_evidence(simulate_c3(d, rng, rho), n_perm=kw["n_perm"], n_boot=0,
                                   seed=int(rng.integers(2**31)))
        return claims.verdict_c3(ev, kw["alpha"]).verdict
    return run


def _c2(rho, confound=0.0):
    def run(d, rng, kw):
        ev = decisions.c2_evidence(simulate_c2(d, rng, rho, confound=confound), 100,
                                   n_perm=kw["n_perm"], n_boot=0,
                                   seed=int(rng.integers(2**31)))
        return claims.verdict_c2(ev, kw["alpha"]).verdict
    return run


def _c4(excess):
    def run(d, rng, kw):
        pi, y = simulate_c4(d, rng, excess)
        po, _ = simulate_c4(d, rng, excess)
        ev = decisions.c4_evidence(pi, y, po, acc_range=0.0, threshold=kw["threshold"],
                                   n_boot=kw["n_boot"], seed=int(rng.integers(2**31)))
        return claims.verdict_c4(ev, kw["alpha"]).verdict
    return run


#: Stated alternatives (effect sizes) of the power columns; the Claims page also
#: gives the power at the effect a build observed.
ALTERNATIVES = {"C1": 1.0, "C2": 0.7, "C3": 0.7, "C4": 0.05}


def scenarios(alternatives: dict[str, float] | None = None, threshold: float = 0.01) -> list[Scenario]:
    alt = {**ALTERNATIVES, **(alternatives or {})}
    return [
        Scenario("C1", "null", "factors exchangeable within blocks (no factor effect)", _c1(0.0)),
        Scenario("C1", "alternative", f"factor-effect SD = {alt['C1']:g} x residual SD",
                 _c1(alt["C1"])),
        Scenario("C2", "null", "small-sample RM/PM unrelated to OOD targets beyond the baseline",
                 _c2(0.0)),
        Scenario("C2", "null (confounded)", "RM tracks true accuracy (r = 0.5), small-sample "
                 "accuracy measures it with noise", _c2(0.0, 0.5), required=False),
        Scenario("C2", "alternative", f"partial association rho = {alt['C2']:g} per prediction",
                 _c2(alt["C2"])),
        Scenario("C3", "null", "factor effects on RM and PM independent (rho = 0)", _c3(0.0)),
        Scenario("C3", "alternative", f"factor effects on RM and PM correlated, rho = {alt['C3']:g}",
                 _c3(alt["C3"])),
        Scenario("C4", "null", f"expected excess disagreement = threshold ({threshold:g})",
                 _c4(threshold)),
        Scenario("C4", "alternative", f"expected excess disagreement = {alt['C4']:g}",
                 _c4(alt["C4"])),
    ]


def _reached(verdict: str) -> dict[str, bool]:
    return {"partly or better": verdict in (claims.PARTLY, claims.SUPPORTED),
            "supported": verdict == claims.SUPPORTED}


def calibrate(profile: str | Profile | Design, n_sim: int = 500, seed: int = 0,
              alpha: float = decisions.ALPHA, n_perm: int = 500, n_boot: int = 200,
              threshold: float = 0.01, claims_: tuple[str, ...] = ("C1", "C2", "C3", "C4"),
              alternatives: dict[str, float] | None = None,
              hypotheses: tuple[str, ...] | None = None,
              progress: bool = False) -> pd.DataFrame:
    """Rate at which each verdict level is reached, per claim and scenario.

    Columns: claim, hypothesis, description, level, rate, se (binomial standard
    error), n_sim, required (a null that must stay at or below ``alpha``).
    Under a null the rate is the false-positive rate; under the alternative, the
    power. ``hypotheses`` (e.g. ``("alternative",)``) limits the scenarios run.
    ``n_perm`` and ``n_boot`` are those of each simulated test (smaller
    than the book's, which only coarsens the p-values a little).
    """
    check_range("n_sim", n_sim, 1, integer=True)
    check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    d = profile if isinstance(profile, Design) else design(profile)
    kw = {"alpha": alpha, "n_perm": n_perm, "n_boot": n_boot, "threshold": threshold}
    rows = []
    # plain tqdm, imported only for the CLI: tqdm.auto warns in kernels without widgets
    if progress:
        from tqdm import tqdm
    else:
        def tqdm(it, **_):
            return it
    chosen = [s for s in scenarios(alternatives, threshold) if s.claim in claims_
              and (hypotheses is None or s.hypothesis in hypotheses)]
    for i, sc in enumerate(tqdm(chosen, desc="calibrating", disable=not progress)):
        rng = np.random.default_rng([seed, i])
        hits = {lv: 0 for lv in LEVELS}
        for _ in range(n_sim):
            for lv, ok in _reached(sc.run(d, rng, kw)).items():
                hits[lv] += ok
        for lv in LEVELS:
            rate = hits[lv] / n_sim
            rows.append({"claim": sc.claim, "hypothesis": sc.hypothesis,
                         "description": sc.description, "level": lv, "rate": rate,
                         "se": float(np.sqrt(max(rate * (1 - rate), 1e-12) / n_sim)),
                         "n_sim": n_sim, "required": sc.required and sc.hypothesis == "null"})
    return pd.DataFrame(rows)


def summary_table(cal: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and level: false-positive rate(s) under the null(s) and
    power under the alternative."""
    out = []
    for (claim, level), g in cal.groupby(["claim", "level"], sort=False):
        row = {"claim": claim, "level": level}
        for _, r in g.iterrows():
            col = "power" if r["hypothesis"] == "alternative" else \
                "false-positive rate" + ("" if r["hypothesis"] == "null" else f" ({r['hypothesis'][6:-1]})")
            row[col] = r["rate"]
            if r["hypothesis"] == "alternative":
                row["alternative"] = r["description"]
        out.append(row)
    return pd.DataFrame(out)


def summary_with_power(profile: str | Profile, observed: dict[str, float], n_sim: int,
                       seed: int = 0, alpha: float = 0.05
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """What the Claims page shows: the calibration of ``profile``'s design (``cal``),
    its :func:`summary_table` and, for the claims with an ``observed`` effect (see
    :func:`rmpm.book.claims.observed_effects`), the power at that effect as two more
    columns (simulated with ``seed + 1``). Returns ``(cal, summary, power)``."""
    cal = calibrate(profile, n_sim=n_sim, seed=seed, alpha=alpha)
    summary = summary_table(cal)
    if not observed:
        return cal, summary, None
    power = calibrate(profile, n_sim=n_sim, seed=seed + 1, alpha=alpha, alternatives=observed,
                      claims_=tuple(observed), hypotheses=("alternative",))
    po = power.set_index(["claim", "level"])["rate"]
    summary["power at this build's effect"] = [po.get((c, lv)) for c, lv in
                                               zip(summary["claim"], summary["level"])]
    summary["this build's effect"] = [observed.get(c) for c in summary["claim"]]
    return cal, summary, power


__all__ = ["Design", "design", "simulate_c1", "simulate_c2", "simulate_c3", "simulate_c4",
           "Scenario", "scenarios", "ALTERNATIVES", "calibrate", "summary_table", "summary_with_power",
           "LEVELS"]
