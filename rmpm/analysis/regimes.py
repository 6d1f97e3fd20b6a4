"""Two regimes side by side: do the verdicts of one profile's build survive in another's
(the short-trained ``default`` and the converged ``large``, say)?

Input: each build's result values by chapter (what the chapters saved; the Claims
chapter's carry the versions of the verdict rules and of the evidence functions that
made them). Two builds are compared only when both versions agree: otherwise a
difference could come from the code, not from the regime, and :func:`compare` refuses
with one error naming both.

What a comparison cannot tell apart: the regimes differ in more than one thing
(training length, training-set size, sometimes width), so a verdict that moves says
*that* the regime matters, not which part of it.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..measures import stats
from .evidence import EVIDENCE_VERSION
from .verdicts import CHAPTER, RULES_VERSION, evidence_from_results, tests_table

#: the Claims chapter's result: its verdicts, versions, observed effects and power
CLAIMS_CHAPTER = "08_claims"

Results = Mapping[str, Mapping[str, Any] | None]


def versions() -> dict[str, int]:
    """The versions this code records with its verdicts (the Claims chapter saves them)."""
    return {"rules": RULES_VERSION, "evidence": EVIDENCE_VERSION}


def check_comparable(a: Results, b: Results, names: tuple[str, str]) -> None:
    """Refuse two builds whose verdict rules or evidence functions differ, or that do not
    say which versions made them (built before versions were recorded)."""
    found = []
    for name, res in zip(names, (a, b)):
        claims = res.get(CLAIMS_CHAPTER)
        if claims is None:
            raise ValueError(f"build {name} has no {CLAIMS_CHAPTER} result: build its book first")
        found.append(claims.get("versions"))
    if None in found or found[0] != found[1]:
        said = ", ".join(f"{n}: {v if v is not None else 'not recorded'}"
                         for n, v in zip(names, found))
        raise ValueError(f"cannot compare builds whose verdict rules or evidence functions "
                         f"differ ({said}); rebuild the older one with this code")


@dataclass(frozen=True)
class Comparison:
    names: tuple[str, str]
    verdicts: pd.DataFrame    # per claim: each regime's verdict, and whether it changed
    tests: pd.DataFrame       # per test behind a verdict: each regime's estimate, interval, p
    contrasts: pd.DataFrame   # C1: each factor's contrast with a fresh seed in each regime
    rank_agreement: stats.Correlation | None  # Spearman of the two regimes' C1 contrasts


def compare(a: Results, b: Results, names: tuple[str, str] = ("default", "large"),
            n_boot: int = 1000, seed: int = 0) -> Comparison:
    """Every claim's verdict, effect with its interval and power at the observed effect
    in regime ``a`` and in regime ``b``; C1's factor contrasts in both and how well
    their order agrees (Spearman across factors, a bootstrap interval over factors: the
    factors are the units compared, and their contrasts are estimated on different
    models in the two regimes)."""
    check_comparable(a, b, names)
    verdicts = _verdicts(a, b, names)
    tests = _tests(a, b, names)
    contrasts = _contrasts(a, b, names)
    agree = None
    both = contrasts.dropna()
    if len(both) >= 3 and both[names[0]].nunique() > 1 and both[names[1]].nunique() > 1:
        agree = stats.correlation(both[names[0]].to_numpy(), both[names[1]].to_numpy(),
                                  "spearman", n_boot=n_boot, seed=seed)
    return Comparison(names, verdicts, tests, contrasts, agree)


def _verdicts(a: Results, b: Results, names: tuple[str, str]) -> pd.DataFrame:
    rows = []
    for claim in CHAPTER:
        row: dict[str, Any] = {"claim": claim}
        for name, res in zip(names, (a, b)):
            v = res[CLAIMS_CHAPTER]
            row[f"verdict ({name})"] = v["verdicts"].get(claim, {}).get("verdict")
            row[f"effect ({name})"] = (v.get("observed_effects") or {}).get(claim)
            row[f"power ({name})"] = _power(v.get("power_at_observed"), claim)
        row["changed"] = row[f"verdict ({names[0]})"] != row[f"verdict ({names[1]})"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("claim")


def _power(rows: list[dict[str, Any]] | None, claim: str) -> float | None:
    """The power of "partly or better" at the observed effect, under i.i.d. noise."""
    for r in rows or []:
        if r["claim"] == claim and r["level"] == "partly or better" and r["noise"] == "iid":
            return float(r["rate"])
    return None


def _tests(a: Results, b: Results, names: tuple[str, str]) -> pd.DataFrame:
    keys = ["claim", "test"]
    cols = ["estimate", "low", "high", "p_value"]
    tables = [tests_table(evidence_from_results(res)).set_index(keys) for res in (a, b)]
    parts = [t[cols].rename(columns={c: f"{c} ({n})" for c in cols})
             for n, t in zip(names, tables)]
    # the threshold depends only on the claim's number of tests: the same in both
    below = tables[0][["partly_below"]].combine_first(tables[1][["partly_below"]])
    return parts[0].join(parts[1], how="outer").join(below).reset_index()


def tests_shown(c: Comparison) -> pd.DataFrame:
    """The tests table as the page shows it: per regime one column "estimate [low,
    high], p", and the p-value a test must beat for "partly"."""
    def cell(row: pd.Series, n: str) -> str:
        est, lo, hi, p = (row[f"{k} ({n})"] for k in ("estimate", "low", "high", "p_value"))
        ci = "" if _missing(est) else (f"{est:.3f}" + ("" if _missing(lo) else
                                                       f" [{lo:.3f}, {hi:.3f}]") + ", ")
        return "not computed" if _missing(p) else f"{ci}p = {p:.4f}"
    t = c.tests
    out = pd.DataFrame({"claim": t["claim"], "test": t["test"]})
    for n in c.names:
        out[n] = [cell(row, n) for _, row in t.iterrows()]
    out["partly needs p <"] = t["partly_below"].map(lambda v: f"{v:.4f}")
    return out.set_index(["claim", "test"])


def _missing(v: Any) -> bool:
    """None, NaN or infinite (a test not computed in a regime)."""
    return v is None or (isinstance(v, numbers.Real) and not np.isfinite(v))


def _contrasts(a: Results, b: Results, names: tuple[str, str]) -> pd.DataFrame:
    return contrasts_of(a, names[0]).join(contrasts_of(b, names[1]), how="outer")


def contrasts_of(results: Results, name: str) -> pd.DataFrame:
    """One build's C1 contrasts, factor -> estimate, as a column called ``name`` (empty
    when its chapter 3 did not run)."""
    ev = evidence_from_results(results).get("C1")
    t = pd.DataFrame({name: pd.Series({} if ev is None else
                                      {f: c["estimate"] for f, c in ev.contrasts.items()},
                                      dtype=float)})
    t.index.name = "factor"
    return t


def rank_text(c: Comparison) -> str:
    """The rank agreement in one line, for the page."""
    r = c.rank_agreement
    if r is None:
        return "too few factors with a contrast in both regimes to compare their order"
    return (f"Spearman ρ = {r.r:.2f} [{r.low:.2f}, {r.high:.2f}] across "
            f"{len(c.contrasts.dropna())} factors")


def changed(c: Comparison) -> list[str]:
    """One sentence per claim whose verdict moved: from what to what, how its observed
    effect and power moved with it, which tests crossed their threshold for "partly",
    and the likely reason, as far as numbers say: at the power of "partly" in each
    regime, how often two builds would disagree on it by chance alone,
    ``pa (1 - pb) + pb (1 - pa)`` (independent builds of the same effects)."""
    a, b = c.names
    out = []
    for claim, row in c.verdicts.iterrows():
        if not row["changed"]:
            continue
        ea, eb = row[f"effect ({a})"], row[f"effect ({b})"]
        pa, pb = row[f"power ({a})"], row[f"power ({b})"]
        effect = ("no effect in the expected direction in either" if ea is None and eb is None
                  else f"observed effect {_num(ea)} in {a}, {_num(eb)} in {b}")
        power = (f"; power at it {_num(pa, '.2f')} and {_num(pb, '.2f')}"
                 if pa is not None or pb is not None else "")
        line = (f"{claim}: {row[f'verdict ({a})']} in {a}, {row[f'verdict ({b})']} in {b} "
                f"({effect}{power}).")
        crossed = _crossed(c, claim)
        if crossed:
            line += " Crossed the threshold for \"partly\": " + "; ".join(crossed) + "."
        line += _reason(pa, pb)
        out.append(line)
    return out


def _crossed(c: Comparison, claim: str) -> list[str]:
    """The claim's tests that are below their "partly" threshold in one regime only."""
    a, b = c.names
    out = []
    for _, t in c.tests[c.tests["claim"] == claim].iterrows():
        pa, pb, thr = t[f"p_value ({a})"], t[f"p_value ({b})"], t["partly_below"]
        if _missing(pa) or _missing(pb) or (pa < thr) == (pb < thr):
            continue
        out.append(f"{t['test']}, p = {pa:.4f} in {a} and {pb:.4f} in {b} (needs < {thr:.4f})")
    return out


def _reason(pa: float | None, pb: float | None) -> str:
    if pa is None or pb is None:
        return ""
    chance = pa * (1 - pb) + pb * (1 - pa)
    if max(pa, pb) < 0.8:
        return (f" At this power two builds of the same effects disagree on \"partly\" with "
                f"probability {chance:.2f}: the move is within the tests' noise, not evidence "
                "that the regime matters.")
    return (f" By chance alone two builds at this power would disagree on \"partly\" with "
            f"probability {chance:.2f}: likely the regime matters (which part of it, the "
            "comparison cannot say).")


def _num(v: float | None, spec: str = ".3g") -> str:
    return "none" if _missing(v) else format(v, spec)
