from rmpm.claims import NOT_SUPPORTED, NOT_TESTED, PARTLY, SUPPORTED, all_verdicts, verdict_c1, \
    verdict_c2, verdict_c3, verdict_c4


def ci(est, lo, hi):
    return {"estimate": est, "low": lo, "high": hi}


def corr(r, lo, hi):
    return {"r": r, "low": lo, "high": hi, "p": 0.01}


C1 = {"ranking": ["width", "lr", "init_seed"],
      "rm_by_factor": {"width": ci(0.4, 0.35, 0.45), "lr": ci(0.2, 0.1, 0.3),
                       "init_seed": ci(0.1, 0.05, 0.15)},
      "friedman": {"statistic": 8.0, "pvalue": 0.01, "kendalls_w": 0.9, "n_blocks": 4,
                   "n_treatments": 3},
      "top_vs_bottom_separated": True}


def test_c1_rules():
    assert verdict_c1(C1).verdict == SUPPORTED
    assert verdict_c1({**C1, "friedman": {**C1["friedman"], "pvalue": 0.4}}).verdict == PARTLY
    assert verdict_c1({**C1, "top_vs_bottom_separated": False,
                       "friedman": {"pvalue": None}}).verdict == NOT_SUPPORTED
    # the permutation p-value, when present, decides
    perm = {**C1, "friedman": {**C1["friedman"], "pvalue": 0.2, "pvalue_permutation": 0.001}}
    assert verdict_c1(perm).verdict == SUPPORTED and "p = 0.001" in verdict_c1(perm).result
    v = verdict_c1(C1)
    assert "width 0.400 [0.350, 0.450]" in v.result and "W = 0.90" in v.result


def test_c2_direction_matters():
    good = {"predict_ood_acc": {"rm": corr(-0.6, -0.8, -0.3), "pm": corr(-0.5, -0.7, -0.2)},
            "predict_ood_pm": {"rm": corr(0.6, 0.3, 0.8), "pm_iid": corr(0.9, 0.8, 0.95)},
            "small_sample_size": 100, "n_populations": 24}
    assert verdict_c2(good).verdict == SUPPORTED
    wrong_sign = {**good, "predict_ood_acc": {"rm": corr(0.6, 0.3, 0.8), "pm": corr(0.5, 0.2, 0.7)}}
    assert verdict_c2(wrong_sign).verdict == PARTLY
    nothing = {k: {kk: corr(0.0, -0.5, 0.5) for kk in v} if isinstance(v, dict) else v
               for k, v in good.items()}
    assert verdict_c2(nothing).verdict == NOT_SUPPORTED


def test_c3_capped_by_datasets():
    r = {"pooled": {"iid": {"spearman": corr(0.7, 0.4, 0.9)}, "ood": {"spearman": corr(0.6, 0.2, 0.8)}},
         "n_populations": 40}
    assert verdict_c3(r, 4).verdict == SUPPORTED
    v = verdict_c3(r, 1)
    assert v.verdict == PARTLY and "Only 1 of the paper's 4" in v.evidence
    r2 = {**r, "pooled": {"iid": {"spearman": corr(0.7, 0.4, 0.9)},
                          "ood": {"spearman": corr(0.1, -0.2, 0.4)}}}
    assert verdict_c3(r2, 4).verdict == PARTLY
    r3 = {**r, "pooled": {"iid": {"spearman": corr(-0.7, -0.9, -0.4)},
                          "ood": {"spearman": corr(0.1, -0.2, 0.4)}}}
    assert verdict_c3(r3, 4).verdict == NOT_SUPPORTED


def test_c4_rules():
    base = {"frac_inputs_disputed": 0.05, "frac_inputs_disputed_ood": 0.2, "acc_range": 0.01,
            "n_models": 4}
    assert verdict_c4(base).verdict == SUPPORTED
    assert verdict_c4({**base, "acc_range": 0.2}).verdict == PARTLY
    assert verdict_c4({**base, "frac_inputs_disputed": 0.0}).verdict == NOT_SUPPORTED
    assert "5.0% of i.i.d. inputs" in verdict_c4(base).result


def test_missing_results_are_not_tested():
    vs = all_verdicts({}, 1)
    assert [v.verdict for v in vs] == [NOT_TESTED] * 4
    assert [v.claim[:2] for v in vs] == ["C1", "C2", "C3", "C4"]
