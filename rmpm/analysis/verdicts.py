"""Verdicts on the paper's claims, from the typed evidence the chapters saved.

Each chapter computes its claim's evidence with :mod:`rmpm.analysis.evidence` and saves
it (``to_dict``) in its result file under the key ``"evidence"``; the Claims
page reads it back with the strict ``from_dict`` (a missing or renamed field is
an error, not a silent change of verdict) and applies the rules below. The
rules are ours (the paper states its claims qualitatively). Each verdict level
is a test decision whose false-positive rate under the claim's null is at most
``alpha``; :mod:`rmpm.analysis.calibration` measures it by simulation through this code
(the ``*_level`` functions take arrays, so the simulations run the very rules
the verdicts use).

Levels: ``"supported"``, ``"partly"``, ``"not supported"``; ``"not tested"``
when the chapter's result is missing; ``"not evidence"`` for the toy profiles,
whose numbers only show that the pipeline runs. C4 is a recommendation, not a
finding: its levels say whether its *premise* holds (``"premise holds"``,
``"premise holds in part"``, ``"premise not shown to hold"``), never "supported".

* **C1** partly: some factor's chance-adjusted hidden-layer RM differs from that of
  ``both_seeds`` (a fresh seed) across blocks (max-T over factors, block sign
  flips, p < alpha). Supported: also some factor differs the same way in *every*
  data set (the conjunction test, p < alpha); so with one data set at most partly.
* **C2** three predictions across training factors, cross-fitted (small-sample RM
  -> OOD accuracy and small-sample PM -> OOD accuracy, each beyond small-sample
  accuracy; small-sample RM -> OOD PM beyond small-sample PM). Partly: the
  smallest p < alpha/3 (Holm's first step, so the family-wise rate is at most
  alpha). Supported: all three p < alpha with the expected sign in every
  leave-one-data-set-out estimate.
* **C3** RM vs PM on i.i.d. and OOD inputs across training factors, cross-fitted.
  Partly: the smaller p < alpha/2 (Bonferroni). Supported: both p < alpha, the
  expected sign leaving out any data set, and the paper's four data sets in the
  build (else capped at partly).
* **C4** the premise of the recommendation: equally good models disagree beyond
  what their accuracy differences imply, by more than ``threshold`` of inputs.
  Holds in part: i.i.d. or OOD p < alpha/2. Holds: both p < alpha.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .evidence import ALPHA, Association, C1Evidence, C2Evidence, C3Evidence, C4Evidence, \
    ExcessDisagreement, c1_evidence, c2_evidence, c3_evidence, c4_evidence, direction_holds

SUPPORTED, PARTLY, NOT_SUPPORTED = "supported", "partly", "not supported"
NOT_TESTED, NOT_EVIDENCE = "not tested", "not evidence"
#: C4's levels: what was tested is the premise of a recommendation
PREMISE_HOLDS, PREMISE_PARTLY, PREMISE_NOT_SHOWN = \
    "premise holds", "premise holds in part", "premise not shown to hold"
#: verdict name of each level code (0, 1, 2) returned by the ``*_level`` functions
LEVEL_NAMES = {"C1": (NOT_SUPPORTED, PARTLY, SUPPORTED), "C2": (NOT_SUPPORTED, PARTLY, SUPPORTED),
               "C3": (NOT_SUPPORTED, PARTLY, SUPPORTED),
               "C4": (PREMISE_NOT_SHOWN, PREMISE_PARTLY, PREMISE_HOLDS)}
N_PAPER_DATASETS = 4
#: bump when a rule or a statistic behind it changes: cached calibrations are
#: keyed by it (2: C1 contrasts with sign flips, cross-fitted C2/C3, C4 premise)
RULES_VERSION = 2

CLAIMS = {
    "C1": "C1: some training differences give systematically larger RM",
    "C2": "C2: RM/PM on a finite sample predict generalisation",
    "C3": "C3: RM correlates with PM on i.i.d. and OOD data",
    "C4": "C4: multiplicity should be exposed, not eliminated (a recommendation; its premise is tested)",
}
#: The chapter whose result file holds each claim's evidence.
CHAPTER = {"C1": "03_rm_by_factor", "C2": "06_finite_samples", "C3": "05_rm_vs_pm",
           "C4": "07_exposing_multiplicity"}
EVIDENCE_TYPE = {"C1": C1Evidence, "C2": C2Evidence, "C3": C3Evidence, "C4": C4Evidence}


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    result: str     # the numbers, with intervals and p-values
    evidence: str   # why this verdict, in one or two sentences


def _num(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _assoc(a: Association | None) -> str:
    if a is None:
        return "n/a"
    return (f"ρ = {_num(a.estimate, '.2f')} [{_num(a.low, '.2f')}, {_num(a.high, '.2f')}], "
            f"p = {_p(a.p_value)}")


def _below(p, level) -> np.ndarray:
    """``p < level`` elementwise, False where p is missing (None or NaN)."""
    a = np.asarray(np.where(np.equal(p, None), np.nan, p), dtype=float)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(a, nan=np.inf) < level


def _sig(p: float | None, level: float) -> bool:
    return bool(_below(p, level))


# -- the rules, on arrays (one entry per simulation, or one build) -----------------

def c1_level(p_blocks, p_datasets, n_datasets: int, alpha: float = ALPHA) -> np.ndarray:
    """0 not supported, 1 partly (a factor differs from the baseline across blocks),
    2 supported (also the same way in every data set, >= 2 data sets)."""
    blocks = _below(p_blocks, alpha)
    datasets = blocks & _below(p_datasets, alpha) & (n_datasets >= 2)
    return np.where(datasets, 2, np.where(blocks, 1, 0))


def c2_level(p, direction, alpha: float = ALPHA) -> np.ndarray:
    """``p``, ``direction`` (..., 3): Holm's first step for partly; all three below
    alpha, each with the expected sign leaving out any data set, for supported."""
    p = np.asarray(p, dtype=float)
    k = p.shape[-1]
    any_sig = _below(p, alpha / k).any(axis=-1)
    all_sig = _below(p, alpha).all(axis=-1) & np.asarray(direction, dtype=bool).all(axis=-1)
    return np.where(all_sig, 2, np.where(any_sig, 1, 0))


def c3_level(p, direction, n_datasets: int, alpha: float = ALPHA) -> np.ndarray:
    """``p``, ``direction`` (..., k) for the k of i.i.d. and OOD tests run:
    Bonferroni for partly; both, with the expected sign leaving out any data set,
    for supported, which needs the paper's four data sets (else partly)."""
    p = np.asarray(p, dtype=float)
    k = p.shape[-1]
    any_sig = _below(p, alpha / k).any(axis=-1)
    all_sig = (k == 2) & _below(p, alpha).all(axis=-1) & np.asarray(direction, bool).all(axis=-1)
    level = np.where(all_sig, 2, np.where(any_sig, 1, 0))
    return np.minimum(level, 1) if n_datasets < N_PAPER_DATASETS else level


def c4_level(p, alpha: float = ALPHA) -> np.ndarray:
    """``p`` (..., k) for i.i.d. (and corrupted) inputs: premise holds in part when
    one p < alpha/k, holds when both p < alpha."""
    p = np.asarray(p, dtype=float)
    k = p.shape[-1]
    any_sig = _below(p, alpha / k).any(axis=-1)
    all_sig = (k == 2) & _below(p, alpha).all(axis=-1)
    return np.where(all_sig, 2, np.where(any_sig, 1, 0))


# -- verdicts --------------------------------------------------------------------------

def verdict_c1(ev: C1Evidence | None, alpha: float = ALPHA) -> Verdict:
    claim = CLAIMS["C1"]
    if ev is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 3 has not been executed.")
    by_p = sorted(ev.contrasts.items(), key=lambda kv: (kv[1]["p_adjusted"] is None,
                                                        kv[1]["p_adjusted"] or 1.0,
                                                        -abs(kv[1]["estimate"])))
    shown = [f"{f} {c['estimate']:+.3f} (adjusted p = {_p(c['p_adjusted'])})"
             for f, c in by_p[:3]]
    result = (f"{ev.value} minus that of {ev.baseline} over {ev.n_blocks} blocks: "
              + "; ".join(shown) + f"; some factor differs: p = {_p(ev.p_value)}"
              + (f"; the same way in all {ev.n_datasets} data sets: p = {_p(ev.p_datasets)}"
                 if ev.n_datasets >= 2 else ""))
    level = int(c1_level(ev.p_value, ev.p_datasets, ev.n_datasets, alpha))
    blocks = level >= 1
    evidence = (f"Some factor {'moves' if blocks else 'is not shown to move'} representations "
                f"systematically more or less than a fresh seed ({ev.baseline}) at alpha = {alpha}"
                + (f"; {'some factor does so the same way' if level == 2 else 'no factor is shown to do so the same way'} "
                   f"in every data set." if ev.n_datasets >= 2 else
                   "; with one data set, 'the same on every data set' cannot be tested, so at "
                   "most partly.")
                + " In most factors a population's models share their initial weights, which "
                  "alone makes their RM smaller than a fresh seed's.")
    if ev.smallest_p >= alpha:
        evidence += (f" With {ev.n_blocks} blocks the sign-flip test cannot give a p-value below "
                     f"{ev.smallest_p:.3g}, so this design cannot show C1 at alpha = {alpha}; "
                     "it needs 6 or more (data set, replicate) blocks.")
    return Verdict(claim, LEVEL_NAMES["C1"][level], result, evidence)


def verdict_c2(ev: C2Evidence | None, alpha: float = ALPHA) -> Verdict:
    claim = CLAIMS["C2"]
    if ev is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 6 has not been executed.")
    checks = {"RM → OOD accuracy (beyond accuracy)": ev.rm_acc,
              "PM → OOD accuracy (beyond accuracy)": ev.pm_acc,
              "RM → OOD PM (beyond i.i.d. PM)": ev.rm_pm}
    result = "; ".join(f"{k}: {_assoc(a)}" for k, a in checks.items()) + \
        (f" (small sample of {ev.n_small} inputs; across factors, each side from different "
         f"replicates; labelled baseline accuracy → OOD accuracy {_assoc(ev.baseline)}, "
         f"label-free disagreement → OOD accuracy {_assoc(ev.label_free)})")
    if ev.pm_acc is None:
        return Verdict(claim, NOT_TESTED, result, "No OOD targets were stored (no corruptions).")
    tested = {k: a for k, a in checks.items() if a is not None}
    ps = [a.p_value for a in tested.values()]
    dirs = [direction_holds(a) for a in tested.values()]
    level = int(c2_level(np.array([np.nan if p is None else p for p in ps]), dirs, alpha))
    ok = [k for k, a in tested.items() if _sig(a.p_value, alpha / len(ps))]
    evidence = (f"Question answered: across training factors, does a factor's small-sample RM "
                f"or PM (on some models) predict its OOD behaviour (on other models) beyond "
                f"the small-sample baseline? {len(ok)} of {len(ps)} predictions hold at "
                f"alpha = {alpha} (Holm-corrected)" + (f": {', '.join(ok)}." if ok else "."))
    fewer = sorted({a.n_datasets for a in tested.values() if a.n_datasets < ev.n_datasets})
    if fewer:
        evidence += (f" Some predictions were tested on {fewer[0]} of the {ev.n_datasets} data "
                     "sets: in the others every hidden layer keeps so many SVCCA dimensions on "
                     f"{ev.n_small} inputs that RM measures the sample, not the models.")
    if len(tested) < len(checks):
        level = min(level, 1)  # a claim about RM and PM with RM untested: at most partly
        evidence += (f" RM was not tested: on {ev.n_small} inputs every hidden layer keeps so "
                     "many SVCCA dimensions that its RM measures the sample, not the models.")
    return Verdict(claim, LEVEL_NAMES["C2"][level], result, evidence)


def verdict_c3(ev: C3Evidence | None, alpha: float = ALPHA) -> Verdict:
    claim = CLAIMS["C3"]
    if ev is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 5 has not been executed.")
    result = (f"within-data-set Spearman across factors of RM (one replicate's models) with "
              f"PM (another's), i.i.d. {_assoc(ev.iid)}; OOD {_assoc(ev.ood)}; "
              f"{ev.iid.n_factors} factors x {ev.n_datasets} data set(s)")
    tests = [a for a in (ev.iid, ev.ood) if a is not None]
    ps = np.array([np.nan if a.p_value is None else a.p_value for a in tests])
    level = int(c3_level(ps, [direction_holds(a) for a in tests], N_PAPER_DATASETS, alpha))
    pos = [n for n, a in (("i.i.d.", ev.iid), ("OOD", ev.ood))
           if a is not None and _sig(a.p_value, alpha / len(ps))]
    evidence = f"Positive association beyond chance (Bonferroni) on: {', '.join(pos) or 'neither'}."
    if level == 2 and ev.n_datasets < N_PAPER_DATASETS:
        level = 1
        evidence += (f" Only {ev.n_datasets} of the paper's {N_PAPER_DATASETS} data sets were in "
                     "this build, so the claim as stated is at most partly tested.")
    return Verdict(claim, LEVEL_NAMES["C3"][level], result, evidence)


def _excess(e: ExcessDisagreement | None) -> str:
    if e is None:
        return "n/a"
    return (f"{100 * e.estimate:.1f}% [{100 * e.low:.1f}, {100 * e.high:.1f}] of inputs "
            f"(churn {100 * e.churn:.1f}% − accuracy gap {100 * e.accuracy_gap:.1f}%), "
            f"p = {_p(e.p_value)}")


def verdict_c4(ev: C4Evidence | None, alpha: float = ALPHA) -> Verdict:
    claim = CLAIMS["C4"]
    if ev is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 7 has not been executed.")
    e = ev.iid
    result = (f"{e.n_models} models (test accuracies within {ev.acc_range:.3f}): excess "
              f"disagreement on i.i.d. inputs {_excess(e)}; on corrupted inputs {_excess(ev.ood)}")
    tests = [x for x in (ev.iid, ev.ood) if x is not None]
    level = int(c4_level(np.array([x.p_value for x in tests]), alpha))
    evidence = ("A recommendation is not a finding: what is tested is its premise, that equally "
                f"good models disagree on more than {100 * e.threshold:g}% of inputs beyond what "
                "their accuracy differences imply, "
                + ("on i.i.d. and corrupted inputs." if level == 2 else
                   "shown on only one of i.i.d. and corrupted inputs." if level == 1 else
                   "not shown on either at this population's size.")
                + " Chapter 7's galleries and report are the exposure itself.")
    return Verdict(claim, LEVEL_NAMES["C4"][level], result, evidence)


VERDICT_RULES = {"C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4}
#: the decision rule behind each verdict function, on arrays (what the calibration runs)
LEVEL_RULES = {"C1": c1_level, "C2": c2_level, "C3": c3_level, "C4": c4_level}
#: the function each claim's chapter computes its evidence with (tests/book/test_book_provenance.py
#: checks that the chapter's notebook calls it)
EVIDENCE_FUNCTIONS = {"C1": c1_evidence, "C2": c2_evidence, "C3": c3_evidence,
                      "C4": c4_evidence}


#: every chapter whose result file the Claims page reads (all but chapter 1's check)
RESULT_CHAPTERS = ("02_populations", "03_rm_by_factor", "04_pm_iid_ood", "05_rm_vs_pm",
                   "06_finite_samples", "07_exposing_multiplicity")


def evidence_from_results(results_by_chapter: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Each claim's typed evidence from the chapters' result ``values`` (None where
    the chapter did not run). A result without a well-formed ``"evidence"``
    record raises: a renamed field must fail, not change a verdict."""
    out = {}
    for c, chapter in CHAPTER.items():
        r = results_by_chapter.get(chapter)
        if r is None:
            out[c] = None
            continue
        if "evidence" not in r:
            raise KeyError(f"result {chapter!r} has no 'evidence' record; rerun the chapter")
        out[c] = EVIDENCE_TYPE[c].from_dict(r["evidence"])
    return out


def all_verdicts(results_by_chapter: dict[str, dict[str, Any] | None], alpha: float = ALPHA,
                 evidence: bool = True) -> list[Verdict]:
    """Verdicts for C1-C4 from the chapters' result ``values``. With ``evidence=False``
    (a toy profile) every tested claim is "not evidence": its numbers are shown,
    no verdict."""
    ev = evidence_from_results(results_by_chapter)
    out = []
    for c, rule in VERDICT_RULES.items():
        v = rule(ev[c], alpha)
        if not evidence and v.verdict != NOT_TESTED:
            v = Verdict(v.claim, NOT_EVIDENCE, v.result,
                        "Toy profile: these numbers only show that the pipeline runs; no verdict.")
        out.append(v)
    return out


def tests_table(evidence: dict[str, Any], alpha: float = ALPHA) -> pd.DataFrame:
    """One row per test behind the verdicts: claim, test, estimate, low, high,
    null_value (what the estimate is compared with), p_value, partly_below (the
    p-value a test must beat for "partly": alpha over the number of the claim's
    tests) and supported_below (alpha)."""
    rows = []

    def add(claim, test, est, low, high, null, p, k):
        rows.append({"claim": claim, "test": test, "estimate": est, "low": low, "high": high,
                     "null_value": null, "p_value": p, "partly_below": alpha / k,
                     "supported_below": alpha})
    e1 = evidence.get("C1")
    if e1 is not None:
        top = min(e1.contrasts.values(), key=lambda c: (c["p_adjusted"] is None,
                                                         c["p_adjusted"] or 1.0,
                                                         -abs(c["estimate"])))
        add("C1", f"a factor's RM differs from that of {e1.baseline} (max-T, block sign flips)",
            top["estimate"], top["low"], top["high"], 0.0, e1.p_value, 1)
        if e1.n_datasets >= 2:
            add("C1", "... the same way in every data set", None, None, None, 0.0,
                e1.p_datasets, 1)
    e2 = evidence.get("C2")
    if e2 is not None:
        for name, a in (("RM → OOD accuracy | accuracy", e2.rm_acc),
                        ("PM → OOD accuracy | accuracy", e2.pm_acc),
                        ("RM → OOD PM | i.i.d. PM", e2.rm_pm)):
            if a is not None:
                add("C2", name, a.estimate, a.low, a.high, 0.0, a.p_value, 3)
    e3 = evidence.get("C3")
    if e3 is not None:
        for name, a in (("RM vs i.i.d. PM", e3.iid), ("RM vs OOD PM", e3.ood)):
            if a is not None:
                add("C3", name, a.estimate, a.low, a.high, 0.0, a.p_value, 2)
    e4 = evidence.get("C4")
    if e4 is not None:
        for name, x in (("excess disagreement, i.i.d.", e4.iid),
                        ("excess disagreement, corrupted", e4.ood)):
            if x is not None:
                add("C4", name, x.estimate, x.low, x.high, x.threshold, x.p_value, 2)
    return pd.DataFrame(rows, columns=["claim", "test", "estimate", "low", "high", "null_value",
                                       "p_value", "partly_below", "supported_below"])


def observed_effects(evidence: dict[str, Any]) -> dict[str, float]:
    """Each claim's effect size as this build measured it, in the units of
    :data:`rmpm.analysis.calibration.POWER_EFFECTS` (for the power at the observed effect):
    C1 the factor-effect SD over the residual SD, C2 the mean of the three partial
    associations in their expected directions, C3 the i.i.d. association, C4 the
    i.i.d. excess disagreement. Claims without evidence, or with an effect of the
    wrong sign, are left out."""
    out: dict[str, float] = {}
    e1, e2, e3, e4 = (evidence.get(c) for c in ("C1", "C2", "C3", "C4"))
    if e1 is not None and e1.effect_size:
        out["C1"] = float(e1.effect_size)
    if e2 is not None and None not in (e2.rm_acc, e2.pm_acc, e2.rm_pm):
        vals = [-e2.rm_acc.estimate, -e2.pm_acc.estimate, e2.rm_pm.estimate] \
            if None not in (e2.rm_acc.estimate, e2.pm_acc.estimate, e2.rm_pm.estimate) else []
        if vals and sum(vals) / 3 > 0:
            out["C2"] = min(0.95, sum(vals) / 3)
    if e3 is not None and e3.iid.estimate is not None and e3.iid.estimate > 0:
        out["C3"] = min(0.95, float(e3.iid.estimate))
    if e4 is not None and e4.iid.estimate > 0:
        out["C4"] = float(e4.iid.estimate)
    return out
