"""Verdicts on the paper's claims, computed from the result files of the chapters.

Each verdict is a pure function of the numbers a chapter saved (see
:mod:`rmpm.results`), so the Claims page is generated, never typed by hand,
and the rules are tested. The rules and thresholds are ours (the paper states
its claims qualitatively); they are arguments with defaults so a reader can
apply stricter ones.

Verdicts: ``"supported"``, ``"partly"``, ``"not supported"``, or
``"not tested"`` when the chapter's result is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED, PARTLY, NOT_SUPPORTED, NOT_TESTED = "supported", "partly", "not supported", "not tested"
N_PAPER_DATASETS = 4


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    result: str     # the numbers, with intervals
    evidence: str   # why this verdict, in one or two sentences


def _ci(d: dict[str, Any] | None, key: str = "estimate", digits: int = 3) -> str:
    if not d:
        return "n/a"
    est = d.get(key, d.get("r"))
    if est is None:
        return "n/a"
    return f"{est:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def _excludes_zero(c: dict[str, Any] | None, sign: int = +1) -> bool:
    """True if the interval lies strictly on the ``sign`` side of zero."""
    if not c or c.get("low") is None or c.get("high") is None:
        return False
    return c["low"] > 0 if sign > 0 else c["high"] < 0


def _cap_for_datasets(verdict: str, n_datasets: int, evidence: str) -> tuple[str, str]:
    if verdict == SUPPORTED and n_datasets < N_PAPER_DATASETS:
        return PARTLY, (evidence + f" Only {n_datasets} of the paper's {N_PAPER_DATASETS} data "
                        "sets were in this build, so the claim as stated is at most partly tested.")
    return verdict, evidence


def verdict_c1(r: dict[str, Any] | None, alpha: float = 0.05) -> Verdict:
    """C1: some training differences give systematically larger RM than others.

    Supported when the highest- and lowest-RM factors have separated
    bootstrap intervals *and* the factor ranking agrees across blocks
    (Friedman test p < alpha; its permutation p-value when the chapter saved
    one, since the chi-square approximation is poor with few blocks); partly
    when only one of the two holds.
    """
    claim = "C1: some training differences give systematically larger RM"
    if r is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 3 has not been executed.")
    fr = r.get("friedman") or {}
    # with few blocks the chi-square p-value is poor; prefer the permutation one
    p = fr.get("pvalue_permutation", fr.get("pvalue"))
    w = fr.get("kendalls_w")
    separated = bool(r.get("top_vs_bottom_separated"))
    consistent = p is not None and p < alpha
    ranking = r.get("ranking", [])
    rm = r.get("rm_by_factor", {})
    top, bottom = (ranking[0], ranking[-1]) if ranking else ("?", "?")
    result = (f"largest RM: {top} {_ci(rm.get(top))}; smallest: {bottom} {_ci(rm.get(bottom))}; "
              f"Friedman p = {p if p is None else f'{p:.3g}'}, Kendall's W = "
              f"{w if w is None else f'{w:.2f}'} over {fr.get('n_blocks')} blocks")
    verdict = SUPPORTED if separated and consistent else PARTLY if separated or consistent \
        else NOT_SUPPORTED
    evidence = (f"Top and bottom factors' intervals {'are' if separated else 'are not'} separated; "
                f"the ranking {'is' if consistent else 'is not shown to be'} consistent across "
                f"blocks at alpha = {alpha}.")
    return Verdict(claim, verdict, result, evidence)


def verdict_c2(r: dict[str, Any] | None) -> Verdict:
    """C2: RM and PM measured on a finite sample predict generalisation.

    Four predictions are checked (RM and PM from a small i.i.d. sample, against
    OOD accuracy and against OOD PM). Higher multiplicity is expected to go with
    *lower* OOD accuracy and *higher* OOD PM. Supported when all four rank
    correlations have intervals excluding zero in the expected direction;
    partly when at least one does.
    """
    claim = "C2: RM/PM on a finite sample predict generalisation"
    if r is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 6 has not been executed.")
    acc, pm = r.get("predict_ood_acc", {}), r.get("predict_ood_pm", {})
    checks = {"RM → OOD accuracy": (acc.get("rm"), -1), "PM → OOD accuracy": (acc.get("pm"), -1),
              "RM → OOD PM": (pm.get("rm"), +1), "i.i.d. PM → OOD PM": (pm.get("pm_iid"), +1)}
    ok = [name for name, (c, s) in checks.items() if _excludes_zero(c, s)]
    result = "; ".join(f"{name}: ρ = {_ci(c)}" for name, (c, _) in checks.items()) + \
        f" (sample of {r.get('small_sample_size')} inputs, {r.get('n_populations')} populations)"
    verdict = SUPPORTED if len(ok) == len(checks) else PARTLY if ok else NOT_SUPPORTED
    evidence = (f"{len(ok)} of {len(checks)} predictions have a rank correlation whose interval "
                f"excludes zero in the expected direction" + (f": {', '.join(ok)}." if ok else "."))
    return Verdict(claim, verdict, result, evidence)


def verdict_c3(r: dict[str, Any] | None, n_datasets: int) -> Verdict:
    """C3: RM correlates with PM, on i.i.d. and on OOD data.

    Uses the pooled Spearman correlations across populations. Supported when
    both intervals lie above zero, partly when one does; capped at partly when
    the build had fewer than the paper's four data sets.
    """
    claim = "C3: RM correlates with PM on i.i.d. and OOD data"
    if r is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 5 has not been executed.")
    pooled = r.get("pooled", {})
    iid = (pooled.get("iid") or {}).get("spearman")
    ood = (pooled.get("ood") or {}).get("spearman")
    pos = [name for name, c in (("i.i.d.", iid), ("OOD", ood)) if _excludes_zero(c, +1)]
    result = (f"Spearman ρ(RM, PM) i.i.d. {_ci(iid)}, OOD {_ci(ood)} over "
              f"{r.get('n_populations')} populations")
    verdict = SUPPORTED if len(pos) == 2 else PARTLY if pos else NOT_SUPPORTED
    evidence = (f"Positive correlation with interval above zero on: {', '.join(pos) or 'neither'}.")
    verdict, evidence = _cap_for_datasets(verdict, n_datasets, evidence)
    return Verdict(claim, verdict, result, evidence)


def verdict_c4(r: dict[str, Any] | None, min_disputed: float = 0.01,
               max_acc_range: float = 0.02) -> Verdict:
    """C4: RM should be measured and exposed, not eliminated.

    A recommendation, not a testable statement; what can be tested is its
    premise: equally accurate models (test accuracies within ``max_acc_range``)
    still disagree on a non-negligible share of inputs (≥ ``min_disputed``),
    which accuracy alone would hide. Supported when both hold; partly when
    models disagree but are not equally accurate.
    """
    claim = "C4: multiplicity should be exposed, not eliminated"
    if r is None:
        return Verdict(claim, NOT_TESTED, "n/a", "Chapter 7 has not been executed.")
    d, d_ood, rng = r.get("frac_inputs_disputed"), r.get("frac_inputs_disputed_ood"), r.get("acc_range")
    result = (f"{r.get('n_models')} models with test accuracies (whole test split) within {rng:.3f} disagree on "
              f"{100 * d:.1f}% of i.i.d. inputs" +
              (f" and {100 * d_ood:.1f}% of corrupted inputs" if d_ood is not None else ""))
    disputed = d is not None and d >= min_disputed
    equal = rng is not None and rng <= max_acc_range
    verdict = SUPPORTED if disputed and equal else PARTLY if disputed else NOT_SUPPORTED
    evidence = ("The premise is tested, not the recommendation: " +
                ("equally accurate models disagree on inputs that accuracy does not reveal."
                 if verdict == SUPPORTED else
                 "models disagree, but are not equally accurate at this profile's size."
                 if verdict == PARTLY else "the models did not disagree on enough inputs."))
    return Verdict(claim, verdict, result, evidence)


def all_verdicts(results_by_name: dict[str, dict[str, Any] | None], n_datasets: int) -> list[Verdict]:
    """Verdicts for C1–C4 from the ``values`` of the chapters' result files."""
    g = results_by_name.get
    return [verdict_c1(g("03_rm_by_factor")), verdict_c2(g("06_finite_samples")),
            verdict_c3(g("05_rm_vs_pm"), n_datasets), verdict_c4(g("07_exposing_multiplicity"))]
