import dataclasses

import pytest

from rmpm.analysis.profiles import PROFILES, get_profile
from rmpm.pipeline.recipe import FACTORS, Recipe, replicate_base, unique_recipes, vary


def test_equal_recipes_equal_keys():
    assert Recipe().key() == Recipe().key()
    assert Recipe(lr=0.001).key() == Recipe.from_dict(Recipe(lr=0.001).to_dict()).key()


@pytest.mark.parametrize("f", [f for f in dataclasses.fields(Recipe)])
def test_any_field_change_changes_key(f):
    base = Recipe(train_size=100)
    v = getattr(base, f.name)
    alternatives = {str: {"dataset": "mnist", "arch": "mlp", "optimizer": "sgd",
                          "schedule": "constant", "augment": "crop"}.get(f.name),
                    bool: not v}
    if isinstance(v, bool):
        new = not v
    elif isinstance(v, str):
        new = alternatives[str]
    elif isinstance(v, int):
        new = v + 1
    elif isinstance(v, float):
        new = v + 0.05 if f.name not in ("momentum",) else 0.5
    else:
        raise AssertionError(f.name)
    assert base.replace(**{f.name: new}).key() != base.key(), f.name


def test_key_is_stable_across_processes():
    # A literal key: if this changes, every stored result is orphaned; bump
    # SCHEMA_VERSION deliberately instead of changing hashing by accident.
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", "from rmpm.pipeline.recipe import Recipe; print(Recipe().key())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == Recipe().key()


@pytest.mark.parametrize("field,value,match", [
    ("dataset", "imagenet", "dataset='imagenet' is not allowed; choose one of: 'fashion_mnist'"),
    ("lr", 0.0, "lr=0.0 must be > 0"),
    ("epochs", 1.5, "epochs=1.5 must be an integer"),
    ("dropout", 1.0, "dropout=1.0 must be <="),
    ("augment", "flip", "augment='flip' is not allowed"),
])
def test_bad_fields_give_clear_errors(field, value, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        Recipe(**{field: value})


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="unknown recipe field.*: colour"):
        Recipe.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown recipe field"):
        Recipe().replace(learning_rate=1)


def test_vary_one_factor_only():
    base = Recipe(train_size=500)
    for name, f in FACTORS.items():
        values = {"augment": ("none", "crop"), "lr": (1e-3, 2e-3), "batch_size": (64, 128),
                  "weight_decay": (0.0, 1e-4), "label_smoothing": (0.0, 0.1),
                  "mixup_alpha": (0.0, 0.2), "dropout": (0.0, 0.3), "width": (16, 32)}.get(name, (0, 1))
        [pop] = vary(base, name, values)
        a, b = (r.to_dict() for r in pop.recipes)
        changed = {k for k in a if a[k] != b[k]}
        assert changed == set(f.fields), (name, changed)


def test_replicates_use_fresh_seeds_and_share_base():
    base = Recipe(train_size=500)
    pops = vary(base, "lr", (1e-3, 2e-3, 4e-3), replicates=3)
    assert len(pops) == 3
    keys = [set(p.keys) for p in pops]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2])
    assert pops[1].recipes[0].init_seed == replicate_base(base, 1).init_seed == 1000
    # populations of different factors share the base recipe of a replicate
    p_lr = vary(base, "lr", (2e-3, 1e-3))[0]
    p_seed = vary(base, "init_seed", (0, 1))[0]
    assert len(unique_recipes([p_lr, p_seed])) == 3


def test_subset_factor_on_full_data_bootstraps():
    [pop] = vary(Recipe(), "subset_seed", (0, 1))
    assert all(r.bootstrap for r in pop.recipes)
    assert pop.recipes[0].key() != pop.recipes[1].key()


def test_vary_rejects_bad_input():
    with pytest.raises(ValueError, match="factor='colour' is not allowed"):
        vary(Recipe(), "colour", (0, 1))
    with pytest.raises(ValueError, match="at least 2"):
        vary(Recipe(), "lr", (0.1,))
    with pytest.raises(ValueError, match="distinct"):
        vary(Recipe(), "lr", (0.1, 0.1))


def test_profiles_are_consistent():
    for name, p in PROFILES.items():
        assert get_profile(name) is p
        for ds in p.datasets:
            assert p.base[ds].dataset == ds and p.reference[ds].dataset == ds
            for f, values in p.factors.items():
                vary(p.base[ds], f, values, p.replicates)  # expands without error
    with pytest.raises(ValueError, match="profile='huge' is not allowed; choose one of: "
                                         "'smoke', 'smoke_multi', 'default', 'large', 'paper', 'paper_cpu'"):
        get_profile("huge")


def test_toy_profiles_carry_the_not_evidence_warning():
    from rmpm.book.chapter import banner
    for name, p in PROFILES.items():
        warned = "```{warning}" in banner(name)
        assert warned == (not p.evidence), name
        if warned:
            assert f"built with the `{name}` profile" in banner(name)
    assert not PROFILES["smoke"].evidence and not PROFILES["smoke_multi"].evidence
    assert PROFILES["default"].evidence and PROFILES["paper"].evidence


def test_relative_values_scale_each_data_set_base():
    from rmpm.pipeline.recipe import FACTORS
    adam = Recipe(lr=2e-3, batch_size=128)
    sgd = Recipe(dataset="cifar10", arch="resnet", optimizer="sgd", lr=0.1, batch_size=256)
    for base, lr in ((adam, 2e-3), (sgd, 0.1)):
        pop = vary(base, "lr", ("x0.5", "x1", "x2"))[0]
        assert [r.lr for r in pop.recipes] == pytest.approx([lr / 2, lr, 2 * lr])
        assert pop.values == ("x0.5", "x1", "x2")
    assert [r.batch_size for r in vary(adam, "batch_size", ("x0.5", "x2"))[0].recipes] == [64, 256]
    with pytest.raises(ValueError, match="relative value 'x1' of a base value of 0"):
        vary(Recipe(weight_decay=0.0), "weight_decay", ("x1", "x2"))
    with pytest.raises(ValueError, match="takes no relative value"):
        FACTORS["init_seed"].apply(adam, "x2")
    with pytest.raises(ValueError, match="must be 'x' and a number"):
        vary(adam, "lr", ("xfast", "x1"))


def test_every_profile_gives_every_factor_the_same_population_size():
    # PM (a variance over models with ddof=0) grows with the number of models, so
    # populations compared with each other must be equally large
    from rmpm.analysis.profiles import PROFILES
    for p in PROFILES.values():
        sizes = {f: len(v) for f, v in p.factors.items()}
        assert len(set(sizes.values())) == 1, (p.name, sizes)
