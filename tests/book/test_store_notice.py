"""What a chapter run outside a book build says first about its models
(rmpm.book.store_notice), and that a run whose models are all stored starts nothing."""
import json
import re

import pytest

from rmpm import paths
from rmpm.book import store_notice as N
from rmpm.book.chapter import banner, show_banner
from rmpm.analysis.populations import eval_spec, profile_recipes, reference_population
from rmpm.analysis.profiles import get_profile
from rmpm.pipeline.store import Store


@pytest.fixture(autouse=True)
def outside_a_build(monkeypatch):
    monkeypatch.delenv("RMPM_BUILD", raising=False)
    monkeypatch.delenv("RMPM_TRAINED", raising=False)


def _fill(store: Store, recipes, profile="smoke"):
    """Entries' folders, which is all the notice looks at."""
    skey = eval_spec(profile).key()
    for r in recipes:
        store.model_dir(r).mkdir(parents=True, exist_ok=True)
        store.eval_dir(r, skey).mkdir(parents=True, exist_ok=True)


def test_which_models_each_chapter_trains():
    p = get_profile("smoke")
    assert N.chapter_recipes("01_svcca_checked", p) == []
    assert N.chapter_recipes("08_claims", p) == []
    ref = list(reference_population(p, None).recipes)
    assert N.chapter_recipes("07_exposing_multiplicity", p) == ref
    assert len(N.chapter_recipes("07_exposing_multiplicity", p, {"n_models": 5})) == 5
    assert N.chapter_recipes("03_rm_by_factor", p) == profile_recipes(p)
    assert len(N.chapter_recipes("03_rm_by_factor", p, {"factors": ["init_seed"]})) < len(
        profile_recipes(p))
    assert set(N.chapter_recipes("02_populations", p)) == set(profile_recipes(p))


def test_every_chapter_that_trains_has_its_rule():
    """A chapter whose code calls what trains (rmpm.analysis.populations' runs and tables,
    the factor-chapter harness) is listed in CHAPTER_MODELS, and only those."""
    trains = re.compile(r"\b(reference_runs|reference_accuracy|population_accuracy|"
                        r"factor_table|factor_chapter|train_profile|run_recipes)\(")
    calling = set()
    for path in sorted(paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if trains.search(code):
            calling.add(path.stem)
    assert calling == set(N.CHAPTER_MODELS)


def test_a_full_store_is_read_and_said_so(tmp_path):
    st = Store(tmp_path / "store")
    recipes = N.chapter_recipes("07_exposing_multiplicity", "smoke")
    _fill(st, recipes)
    text = N.notice("smoke", "07_exposing_multiplicity", {}, store=st)
    assert text == (f"**Models**: this chapter reads its {len(recipes)} models from the store "
                    f"at `{st.root}`, which `make book PROFILE=smoke` filled; it trains none.")


def test_an_empty_store_says_how_many_how_long_and_make_book(tmp_path, monkeypatch):
    st = Store(tmp_path / "store")
    recipes = N.chapter_recipes("03_rm_by_factor", "smoke")
    _fill(st, recipes[:3])
    asked = {}

    def estimate(lack, p, workers=None):
        asked["n"] = len(lack)
        return {"wall_s": 1500.0, "workers": 2}
    monkeypatch.setattr(N, "estimate_seconds", estimate)
    text = N.notice("smoke", "03_rm_by_factor", {}, store=st)
    assert asked["n"] == len(recipes) - 3
    assert f"holds 3 of the {len(recipes)} models" in text
    assert f"train the other **{len(recipes) - 3}**" in text
    assert "about **25 min** on this machine (2 worker processes" in text
    assert "`make book PROFILE=smoke` fills the store for every chapter at once, on every core" in text
    assert text.endswith("A progress bar follows.")


@pytest.mark.trains  # it times a real training step
def test_the_estimate_times_this_machine():
    recipes = N.chapter_recipes("07_exposing_multiplicity", "smoke")
    est = N.estimate_seconds(recipes, "smoke", workers=2)
    assert est["workers"] == 2 and 0 < est["wall_s"] < 600 and est["measured_s"] > 0
    assert est["wall_s"] == pytest.approx((est["train_core_s"] + est["eval_core_s"]) / 2
                                          + N.STARTUP_S)


def test_a_book_build_and_a_chapter_without_models_say_nothing(tmp_path, monkeypatch):
    st = Store(tmp_path / "store")
    assert N.notice("smoke", "01_svcca_checked", {}, store=st) is None
    N._CURRENT.clear()  # no chapter has run its first cell in this process
    assert N.notice("smoke", None, store=st) is None
    monkeypatch.setenv("RMPM_BUILD", "20260101T000000-abcdef")
    assert N.notice("smoke", "07_exposing_multiplicity", {}, store=st) is None


def test_the_banner_is_the_books_in_a_build_and_names_the_store_outside(tmp_path, monkeypatch):
    from IPython.display import Markdown
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda x: shown.append(x))
    monkeypatch.setenv("RMPM_STORE", str(tmp_path / "store"))
    _fill(Store(), N.chapter_recipes("07_exposing_multiplicity", "smoke"))
    N.remember("07_exposing_multiplicity", {"n_models": None})
    monkeypatch.setenv("RMPM_BUILD", "20260101T000000-abcdef")
    show_banner("smoke")
    monkeypatch.delenv("RMPM_BUILD")
    show_banner("smoke")
    assert all(isinstance(m, Markdown) for m in shown)
    assert shown[0].data == banner("smoke")  # the book's page is what it was
    assert shown[1].data.startswith(banner("smoke") + "\n\n**Models**: this chapter reads")


def test_a_run_whose_models_are_stored_starts_no_cluster(tmp_path, monkeypatch):
    from rmpm.pipeline import engine, runs
    from rmpm.pipeline.recipe import Recipe
    r = Recipe(dataset="digits", arch="mlp", width=8, epochs=1, batch_size=64)
    st = Store(tmp_path / "store")
    spec = eval_spec("smoke")
    monkeypatch.setattr(st, "has_model", lambda rr: True)
    monkeypatch.setattr(st, "has_eval", lambda rr, k: True)
    monkeypatch.setattr(st, "model", lambda rr: "model")
    monkeypatch.setattr(st, "eval", lambda rr, k: "eval")

    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started for stored models")
    monkeypatch.setattr(engine, "get_client", no_cluster)
    [res] = runs.run_recipes([r], spec, st)
    assert (res.model, res.eval, res.trained) == ("model", "eval", False)


def test_the_progress_bar_is_plain_text_in_a_kernel_too():
    import tqdm.std

    from rmpm.pipeline.tasks import progress_bar
    bar = progress_bar(True, 3, "3 to train")
    try:
        assert type(bar) is tqdm.std.tqdm
    finally:
        bar.close()
