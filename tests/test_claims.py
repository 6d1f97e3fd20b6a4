"""Verdict rules, their typed evidence, and their calibration by simulation."""
import dataclasses

import numpy as np
import pytest

from rmpm.book import factor_analysis as A, calibration as C, claims, decisions as D
from rmpm.book.claims import NOT_EVIDENCE, NOT_SUPPORTED, NOT_TESTED, PARTLY, SUPPORTED

DESIGN = C.design("default")
# enough simulations that a rule with a 0.10 false-positive rate fails the
# <= 0.075 check with probability about 0.97 (binomial SE at 0.05 is 0.011)
N_SIM = 400
FPR_BOUND = 0.075


def _c1(p, p_ds=None, n_ds=1):
    return D.C1Evidence(value="rm_adj", ranking=["width", "lr", "init_seed"],
                        means={"width": 0.9, "lr": 0.6, "init_seed": 0.5}, kendalls_w=0.8,
                        p_value=p, n_blocks=4, n_factors=3, n_datasets=n_ds, p_datasets=p_ds,
                        effect_size=1.2, n_perm=2000)


def _assoc(p, est=0.6, alt="greater", loo=None):
    return D.Association(x="x", y="y", control=None, alternative=alt, estimate=est, low=0.1,
                         high=0.9, p_value=p, per_dataset={"a": est}, leave_one_out=loo,
                         n_populations=24, n_factors=12, n_datasets=1 if loo is None else 2,
                         n_perm=2000, n_boot=1000, level=0.95)


def _excess(p):
    return D.ExcessDisagreement(estimate=0.03, low=0.02, high=0.04, p_value=p, threshold=0.01,
                                churn=0.05, accuracy_gap=0.02, n_models=4, n_inputs=1000,
                                n_boot=1000, level=0.95)


def test_c1_levels():
    assert claims.verdict_c1(_c1(0.01)).verdict == PARTLY  # one data set: at most partly
    assert claims.verdict_c1(_c1(0.01, 0.01, 2)).verdict == SUPPORTED
    assert claims.verdict_c1(_c1(0.01, 0.2, 2)).verdict == PARTLY
    assert claims.verdict_c1(_c1(0.2, 0.01, 2)).verdict == NOT_SUPPORTED
    assert claims.verdict_c1(_c1(None)).verdict == NOT_SUPPORTED
    assert claims.verdict_c1(None).verdict == NOT_TESTED
    assert "permutation p = 0.01" in claims.verdict_c1(_c1(0.01)).result


def test_c2_levels_use_holm_and_direction():
    ev = D.C2Evidence(rm_acc=_assoc(0.01, -0.5, "less"), pm_acc=_assoc(0.02, -0.5, "less"),
                      rm_pm=_assoc(0.03), baseline=_assoc(0.001), n_small=100, n_datasets=1)
    assert claims.verdict_c2(ev).verdict == SUPPORTED
    # 0.03 < alpha but not < alpha/3: no prediction survives Holm's first step
    weak = dataclasses.replace(ev, rm_acc=_assoc(0.03, -0.5, "less"),
                               pm_acc=_assoc(0.2, -0.1, "less"))
    assert claims.verdict_c2(weak).verdict == NOT_SUPPORTED
    one = dataclasses.replace(weak, rm_acc=_assoc(0.01, -0.5, "less"))
    assert claims.verdict_c2(one).verdict == PARTLY
    # a leave-one-data-set-out estimate of the wrong sign blocks "supported"
    flip = dataclasses.replace(ev, rm_pm=_assoc(0.001, 0.5, loo={"a": 0.4, "b": -0.1}))
    assert claims.verdict_c2(flip).verdict == PARTLY
    assert claims.verdict_c2(dataclasses.replace(ev, rm_pm=None)).verdict == NOT_TESTED


def test_c3_levels_and_cap():
    ev = D.C3Evidence(iid=_assoc(0.001), ood=_assoc(0.001), n_datasets=4)
    assert claims.verdict_c3(ev).verdict == SUPPORTED
    assert claims.verdict_c3(dataclasses.replace(ev, n_datasets=1)).verdict == PARTLY
    assert claims.verdict_c3(dataclasses.replace(ev, ood=_assoc(0.4))).verdict == PARTLY
    # Bonferroni: 0.03 is below alpha but not below alpha/2
    assert claims.verdict_c3(D.C3Evidence(_assoc(0.03), _assoc(0.4), 4)).verdict == NOT_SUPPORTED


def test_c4_levels():
    assert claims.verdict_c4(D.C4Evidence(_excess(0.01), _excess(0.01), 0.01)).verdict == SUPPORTED
    assert claims.verdict_c4(D.C4Evidence(_excess(0.01), _excess(0.3), 0.01)).verdict == PARTLY
    assert claims.verdict_c4(D.C4Evidence(_excess(0.04), _excess(0.3), 0.01)).verdict == NOT_SUPPORTED


def test_typed_evidence_round_trip_and_renamed_field_fails():
    ev = D.C3Evidence(iid=_assoc(0.01), ood=None, n_datasets=1)
    d = ev.to_dict()
    assert D.C3Evidence.from_dict(d) == ev
    renamed = {**d, "iid": {**d["iid"], "pvalue": d["iid"]["p_value"]}}
    del renamed["iid"]["p_value"]
    with pytest.raises(KeyError, match="missing field.*p_value.*unexpected field.*pvalue"):
        D.C3Evidence.from_dict(renamed)
    results = {"05_rm_vs_pm": {"evidence": d}, "03_rm_by_factor": {"ranking": []}}
    with pytest.raises(KeyError, match="03_rm_by_factor.*no 'evidence'"):
        claims.all_verdicts(results)


def test_toy_profiles_get_no_verdict():
    results = {"05_rm_vs_pm": {"evidence": D.C3Evidence(_assoc(0.001), _assoc(0.001), 4).to_dict()}}
    vs = claims.all_verdicts(results, evidence=False)
    assert [v.verdict for v in vs] == [NOT_TESTED, NOT_TESTED, NOT_EVIDENCE, NOT_TESTED]
    assert claims.all_verdicts(results)[2].verdict == SUPPORTED


# -- the statistics themselves --------------------------------------------------

def test_association_recovers_a_planted_correlation_and_its_sign():
    d = dataclasses.replace(DESIGN, replicates=3)
    t = C.simulate_c3(d, np.random.default_rng(1), rho=0.95, noise=0.1)
    a = D.association(t, "rm_adj", "pm:iid", n_perm=500, n_boot=300)
    assert a.estimate > 0.7 and a.p_value < 0.01 and a.low < a.estimate < a.high
    assert D.association(t, "rm_adj", "pm:iid", alternative="less", n_perm=500,
                         n_boot=0).p_value > 0.9
    # block levels alone (no within-block relation) give no association
    t2 = t.copy()
    shift = t2["replicate"] * 100.0
    t2["rm_adj"] = np.random.default_rng(2).normal(size=len(t2)) + shift
    t2["pm:iid"] = np.random.default_rng(3).normal(size=len(t2)) + shift
    assert abs(D.association(t2, "rm_adj", "pm:iid", n_perm=200, n_boot=0).estimate) < 0.5


def test_partial_association_removes_the_control():
    rng = np.random.default_rng(4)
    t = C.simulate_c2(DESIGN, rng, rho=0.0)
    # x is a noisy copy of the control: related to y only through it
    t["x"] = t["acc_small"] + 0.3 * rng.normal(size=len(t))
    raw = D.association(t, "x", "acc_ood_rest", n_perm=200, n_boot=0)
    part = D.association(t, "x", "acc_ood_rest", control="acc_small", n_perm=200, n_boot=0)
    assert raw.estimate > 0.5 and abs(part.estimate) < raw.estimate / 2


def test_excess_disagreement_known_values():
    # two models, 10 inputs: they disagree on 4; accuracies 0.6 and 0.4 -> excess 0.2
    y = np.zeros(10, int)
    a = np.array([0] * 6 + [1] * 4)
    b = np.array([0] * 4 + [1] * 6)
    probs = np.stack([np.eye(2)[a], np.eye(2)[b]])
    e = D.excess_disagreement(probs, y, threshold=0.0, n_boot=200)
    assert e.churn == pytest.approx(0.2) and e.accuracy_gap == pytest.approx(0.2)
    assert e.estimate == pytest.approx(0.0)
    # nested errors are fully explained by accuracy: churn == |acc gap|, excess 0
    c = np.array([0] * 5 + [1] * 5)
    d = np.array([1] * 5 + [0] * 5)
    e2 = D.excess_disagreement(np.stack([np.eye(2)[c], np.eye(2)[d]]), y, n_boot=200)
    assert e2.estimate == pytest.approx(1.0) and e2.accuracy_gap == pytest.approx(0.0)


def test_effect_size_of_a_pure_factor_effect():
    m = np.tile(np.arange(5.0), (4, 1)) + np.random.default_rng(0).normal(0, 0.1, (4, 5))
    assert D.factor_effect_size(m) > 5
    assert D.factor_effect_size(m[:1]) is None


# -- calibration: each rule's false-positive rate under its null ------------------

def _rates(claim, n_sim=N_SIM, design=DESIGN, **kw):
    cal = C.calibrate(design, n_sim=n_sim, n_perm=200, n_boot=100, claims_=(claim,), **kw)
    return cal.set_index(["hypothesis", "level"])["rate"]


@pytest.mark.parametrize("claim", ["C1", "C2", "C3", "C4"])
def test_false_positive_rate_under_the_null_is_at_most_alpha(claim):
    r = _rates(claim)
    for level in C.LEVELS:
        assert r[("null", level)] <= FPR_BOUND, (claim, level, r[("null", level)])


def test_power_against_the_stated_alternatives():
    d3 = dataclasses.replace(DESIGN, replicates=3)
    assert _rates("C1", 200, d3, alternatives={"C1": 1.5})[("alternative", "partly or better")] >= 0.8
    assert _rates("C3", 200, d3, alternatives={"C3": 0.85})[("alternative", "partly or better")] >= 0.8
    assert _rates("C4", 200)[("alternative", "supported")] >= 0.8


def test_the_old_c1_rule_is_caught_by_the_same_simulation():
    # the rule this replaced ("top and bottom bootstrap intervals separated")
    # says "partly" under the exchangeable null most of the time
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(100):
        t = C.simulate_c1(DESIGN, rng, 0.0).assign(rm=lambda f: f["rm_adj"])
        hits += A.ci_separated(A.factor_intervals(t, "rm", n_boot=200))
    assert hits / 100 > 0.2  # four times alpha or more


def test_calibrate_table_and_summary():
    cal = C.calibrate("smoke", n_sim=5, n_perm=50, n_boot=20)
    assert set(cal["claim"]) == {"C1", "C2", "C3", "C4"}
    assert cal["rate"].between(0, 1).all() and (cal["n_sim"] == 5).all()
    s = C.summary_table(cal)
    assert {"claim", "level", "false-positive rate", "power"} <= set(s.columns)
    assert len(s) == 8
