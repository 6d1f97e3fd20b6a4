"""Bad input to the API and the command line: one clear error naming the argument
and what is allowed, before any work."""
import numpy as np
import pytest
import torch

from rmpm.analysis import populations as X
from rmpm.measures import multiplicity as PM
from rmpm.cli import main
from rmpm.pipeline.train import resolve_device


def _probs():
    p = np.random.default_rng(0).random((3, 4, 5))
    return p / p.sum(axis=2, keepdims=True)


def test_summary_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must be integer class indices 0 to 4 \(probs has "
                                         r"5 classes\); got 1 out of range \(e.g. 7\)"):
        PM.summary(_probs(), [0, 1, 7, 2])
    with pytest.raises(ValueError, match="got 1 out of range"):
        PM.summary(_probs(), [0, -1, 3, 2])
    assert PM.summary(_probs(), [0, 1, 4, 2])["accuracy_max"] <= 1.0  # in range is fine


def test_summary_refuses_string_labels():
    with pytest.raises(ValueError, match=r"labels must be integer class indices 0 to 4 .*got "
                                         r"dtype <U3 \(e.g. np.str_\('cat'\)\)|got dtype <U3"):
        PM.summary(_probs(), ["cat", "dog", "cat", "dog"])
    with pytest.raises(ValueError, match="got non-integer values"):
        PM.accuracies(_probs(), [0.5, 1, 2, 3])


def _no_work(monkeypatch):
    import rmpm.pipeline.data
    import rmpm.pipeline.train

    def fail(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(rmpm.pipeline.data, "ensure", fail)
    monkeypatch.setattr(rmpm.pipeline.data, "load", fail)
    monkeypatch.setattr(rmpm.pipeline.train, "prepare", fail)


def test_bad_device_is_named_before_any_data_is_loaded(tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    base = ["train", "--profile", "smoke", "--reference", "--store", str(tmp_path)]
    assert main(base + ["--device", "nosuch"]) == 2
    assert ("rmpm train: error: --device='nosuch' is not a device; choose one of: auto, cpu, "
            "cuda, cuda:N, mps") in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(base + ["--device", "cuda"]) == 2
    assert ("rmpm train: error: --device='cuda': PyTorch sees no CUDA GPU on this machine "
            "(torch.cuda.is_available() is False); use cpu or auto") in capsys.readouterr().err
    with pytest.raises(ValueError, match="device='meta' is not supported"):
        resolve_device("meta")


def test_option_with_no_names_is_an_error(tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    base = ["train", "--profile", "smoke", "--device", "cpu", "--store", str(tmp_path)]
    assert main(base + ["--factor"]) == 2
    assert ("rmpm train: error: --factor needs at least one name; choose from: init_seed, "
            "order_seed") in capsys.readouterr().err
    assert main(base + ["--dataset"]) == 2
    assert "--dataset needs at least one name; choose from: fashion_mnist" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"factors=\[\] names no factor; give None \(all\)"):
        X.profile_recipes("smoke", factors=[])


def test_book_only_with_no_names_is_an_error(monkeypatch, capsys):
    from rmpm.book import build as book
    monkeypatch.setattr(book, "build_book", lambda *a, **k: pytest.fail("the build started"))
    assert main(["book", "--profile", "smoke", "--only"]) == 2
    assert ("rmpm book: error: --only needs at least one name; choose from: 00_methods, "
            "01_svcca_checked") in capsys.readouterr().err


@pytest.mark.parametrize("action", ["ls", "verify", "sweep"])
def test_store_commands_refuse_a_missing_folder(tmp_path, capsys, action):
    missing = tmp_path / "nowhere"
    assert main(["store", action, "--store", str(missing)]) == 2
    assert (f"rmpm store: error: --store: no store at {missing} (the folder does not exist)"
            in capsys.readouterr().err)
    assert not missing.exists()
