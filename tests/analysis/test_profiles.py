"""The profiles' declared fit rule (when a model counts as fitting its training data)."""
import pytest

from rmpm.analysis.profiles import PROFILES, FitRule

H = [{"train_loss": 1.0}, {"train_loss": 0.5}, {"train_loss": 0.49}]


def test_loss_drop_is_the_last_epochs_relative_fall():
    assert FitRule().loss_drop(H) == pytest.approx(0.02)
    assert FitRule().loss_drop(H[:1]) is None
    assert FitRule().loss_drop([{"train_loss": 0.0}, {"train_loss": 0.0}]) == 0.0


def test_a_rule_checks_accuracy_and_plateau():
    assert FitRule().met({"train_acc": 0.1}, H)  # no rule: always met
    assert FitRule(min_train_acc=0.99).met({"train_acc": 0.995}, H)
    assert not FitRule(min_train_acc=0.99).met({"train_acc": 0.98}, H)
    assert FitRule(max_loss_drop=0.05).met({"train_acc": 0.5}, H)
    assert not FitRule(max_loss_drop=0.01).met({"train_acc": 0.5}, H)
    assert not FitRule(max_loss_drop=0.5).met({"train_acc": 0.5}, H[:1])  # one epoch: no plateau
    both = FitRule(min_train_acc=0.99, max_loss_drop=0.05)
    assert not both.met({"train_acc": 0.5}, H) and both.met({"train_acc": 0.999}, H)
    assert both.text() == "training accuracy >= 0.99 and the last epoch lowers the training loss by <= 5 %"
    assert FitRule().text() == "none"


def test_every_profile_names_a_rule_only_for_its_own_data_sets():
    for p in PROFILES.values():
        assert set(p.fit_rule) <= set(p.datasets), p.name
        assert 0 <= p.train_acc_tolerance < 1
