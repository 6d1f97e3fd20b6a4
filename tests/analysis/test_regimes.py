"""Two builds side by side (rmpm.analysis.regimes), on the committed default build's
result values and altered copies of them."""
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rmpm.analysis import regimes as RG

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default():
    res = {k: v["values"] for k, v in
           json.loads((ROOT / "manifests" / "default.json").read_text())["results"].items()}
    res[RG.CLAIMS_CHAPTER].setdefault("versions", RG.versions())
    return res


def test_a_build_compared_with_itself_changes_nothing(default):
    c = RG.compare(default, copy.deepcopy(default), ("a", "b"), n_boot=200)
    assert list(c.verdicts.index) == ["C1", "C2", "C3", "C4"] and not c.verdicts["changed"].any()
    assert (c.verdicts["verdict (a)"] == c.verdicts["verdict (b)"]).all()
    assert np.allclose(c.tests["estimate (a)"].dropna(), c.tests["estimate (b)"].dropna())
    assert len(c.contrasts) == 11 and c.rank_agreement.r == pytest.approx(1.0)
    assert RG.changed(c) == [] and "across 11 factors" in RG.rank_text(c)


def test_a_moved_verdict_and_a_reversed_order_are_reported(default):
    other = copy.deepcopy(default)
    other[RG.CLAIMS_CHAPTER]["verdicts"]["C3"]["verdict"] = "not supported"
    for c in other["03_rm_by_factor"]["evidence"]["contrasts"].values():
        c["estimate"] = -c["estimate"]  # the opposite order of the factors
    c = RG.compare(default, other, ("default", "large"), n_boot=200)
    assert list(c.verdicts.index[c.verdicts["changed"]]) == ["C3"]
    [line] = RG.changed(c)
    assert line.startswith("C3: partly in default, not supported in large (observed effect")
    assert "probability" in line  # the chance of such a move at the recorded power
    assert c.rank_agreement.r == pytest.approx(-1.0)
    assert c.rank_agreement.low <= c.rank_agreement.high


@pytest.mark.parametrize("what", ["rules", "evidence"])
def test_builds_of_other_rules_or_evidence_are_refused(default, what):
    other = copy.deepcopy(default)
    other[RG.CLAIMS_CHAPTER]["versions"] = {**RG.versions(), what: RG.versions()[what] + 1}
    with pytest.raises(ValueError, match="cannot compare builds whose verdict rules or evidence "
                                         "functions differ .default: .*large: "):
        RG.compare(default, other, ("default", "large"))


def test_a_build_that_recorded_no_versions_is_refused(default):
    old = copy.deepcopy(default)
    del old[RG.CLAIMS_CHAPTER]["versions"]
    with pytest.raises(ValueError, match="default: not recorded"):
        RG.compare(old, default, ("default", "large"))
    with pytest.raises(ValueError, match="has no 08_claims result"):
        RG.compare({}, default, ("default", "large"))


def test_a_test_that_crossed_its_threshold_is_named_with_the_chance_of_the_move(default):
    """C2 moves because one of its tests lost its p-value; at a power of 0.5 in both
    regimes, two builds disagree on "partly" half the time: the sentence says so."""
    other = copy.deepcopy(default)
    other[RG.CLAIMS_CHAPTER]["verdicts"]["C2"]["verdict"] = "not supported"
    for res in (default, other):
        for r in res[RG.CLAIMS_CHAPTER]["power_at_observed"]:
            if r["claim"] == "C2" and r["level"] == "partly or better" and r["noise"] == "iid":
                r["rate"] = 0.5
    c = RG.compare(default, other, ("default", "large"), n_boot=50)
    tests = c.tests.copy()
    [i] = tests.index[tests["test"] == "RM → OOD PM | i.i.d. PM"]
    assert tests.loc[i, "partly_below"] == pytest.approx(0.05 / 3)  # alpha over 3 tests
    tests.loc[i, "p_value (default)"], tests.loc[i, "p_value (large)"] = 0.001, 0.2
    c = dataclasses.replace(c, tests=tests)
    [line] = RG.changed(c)
    assert ('Crossed the threshold for "partly": RM → OOD PM | i.i.d. PM, p = 0.0010 in '
            "default and 0.2000 in large (needs < 0.0167).") in line
    assert 'disagree on "partly" with probability 0.50' in line
    assert "within the tests' noise" in line
    shown = RG.tests_shown(c)
    assert list(shown.columns) == ["default", "large", "partly needs p <"]
    assert shown.loc[("C2", "RM → OOD PM | i.i.d. PM"), "large"].endswith("p = 0.2000")


def test_at_high_power_a_move_is_put_down_to_the_regime():
    assert "likely the regime matters" in RG._reason(0.95, 0.9)
    assert "within the tests' noise" in RG._reason(0.6, 0.7)
    assert RG._reason(None, 0.9) == ""
