"""The multiplicity report on synthetic models and probabilities with known answers."""
import json
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from rmpm.measures import report as R


def _onehotish(classes, k=3, conf=0.95):
    """(M, N, K) probabilities: model m puts ``conf`` on classes[m][n]."""
    c = np.asarray(classes)
    p = np.full(c.shape + (k,), (1 - conf) / (k - 1))
    np.put_along_axis(p, c[..., None], conf, axis=2)
    return p


def test_identical_models_have_nothing_to_report():
    p = _onehotish([[0, 1, 2, 1]] * 3)
    rep = R.multiplicity_report(p, y=[0, 1, 2, 0], n_boot=50)
    assert rep.value("frac_disputed") == 0 and rep.value("prediction_variance") == pytest.approx(0, abs=1e-12)
    assert rep.value("mean_disagreement") == 0 and rep.value("discrepancy") == 0
    assert rep.confabulation_counts() == [0, 0, 0] and len(rep.most_disputed()) == 0
    assert rep.value("accuracy[m0]") == pytest.approx(0.75)


def test_constructed_confabulation_is_found_and_scored():
    # input 2: model 2 alone says class 0 with 0.95; input 3: models split 0/1/2 at 0.5 (not confident)
    classes = [[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 2]]
    p = _onehotish(classes)
    p[:, 3] = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    conf = R.confabulations(p, 0.9, labels=[0, 1, 1, 0])
    assert conf[["model", "input", "predicted"]].values.tolist() == [[2, 2, 0]]
    assert not conf["correct"].iloc[0] and conf["share_others"].iloc[0] == 0
    assert R.disputed(p).tolist() == [False, False, True, True]
    # input 3 (three-way split) is more disputed than input 2 (two against one)
    assert R.dispute_order(p)[:2].tolist() == [3, 2]
    rep = R.multiplicity_report(p, y=[0, 1, 1, 0], class_names=["a", "b", "c"], n_boot=50)
    assert rep.confabulation_counts() == [0, 0, 1]
    assert rep.value("frac_disputed") == pytest.approx(0.5)
    assert rep.most_disputed().tolist() == [3, 2]


def test_two_models_a_contradicted_confident_prediction_is_a_confabulation():
    p = _onehotish([[0, 1], [0, 2]])
    assert R.confabulation_counts(R.confabulations(p), 2) == [1, 1]


def _tiny_models():
    torch.manual_seed(0)
    return [nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
            for _ in range(3)]


def test_report_from_torch_models_with_layers_and_save(tmp_path):
    models = _tiny_models()
    x = torch.randn(60, 1, 4, 4)
    y = torch.randint(0, 3, (60,))
    rep = R.multiplicity_report(models, x, y, layers=["2"], class_names=["a", "b", "c"],
                                n_boot=50, top_k=4)
    s = rep.summary
    assert set(s["group"]) == {"PM", "accuracy", "RM"}
    assert {"rm[2]", "rm", "accuracy[m2]", "prediction_variance"} <= set(s["measure"])
    assert 0 <= rep.value("rm") <= 1 and rep.value("prediction_variance") > 0
    files = rep.save(tmp_path / "rep")
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert names == {"summary.csv", "per_input.csv", "confabulations.csv", "figure.png",
                     "report.md", "manifest.json"}  # no temp files left behind
    man = json.loads(files["manifest"].read_text())
    for name, meta in man["files"].items():
        assert hashlib.sha256((tmp_path / "rep" / name).read_bytes()).hexdigest() == meta["sha256"]
    md = files["markdown"].read_text()
    assert "![Multiplicity report](figure.png)" in md and "## Most disputed inputs" in md


def test_model_modes_are_restored():
    models = _tiny_models()
    models[0].train()
    R.predict_probs(models, torch.randn(5, 1, 4, 4))
    assert models[0].training


def test_bad_arguments_are_named():
    p = _onehotish([[0, 1], [0, 2]])
    with pytest.raises(ValueError, match="at least 2 models"):
        R.multiplicity_report(p[:1])
    with pytest.raises(ValueError, match="y must have shape"):
        R.multiplicity_report(p, y=[0, 1, 2])
    with pytest.raises(ValueError, match="layers needs models"):
        R.multiplicity_report(p, layers=["fc"])
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        R.multiplicity_report(p, class_names=["a", "b"])
    with pytest.raises(TypeError, match="nn.Module"):
        R.multiplicity_report("models")
    with pytest.raises(ValueError, match="confidence"):
        R.confabulations(p, 1.5)


def test_colour_images_are_shown_in_colour():
    """CIFAR-10/SVHN inputs (N, 3, H, W) become (N, H, W, 3) thumbnails, given as
    display images or rescaled from normalised model inputs, and the gallery draws
    them as RGB; gray (N, 1, H, W) inputs become (N, H, W)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand((6, 3, 32, 32), generator=g)
    p = _onehotish([[0, 1, 2, 1, 0, 2], [0, 1, 1, 1, 0, 2], [2, 1, 2, 1, 0, 0]])
    rep = R.multiplicity_report(p, x01, [0, 1, 2, 1, 0, 2], n_boot=20, images=x01)
    assert rep.images.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(rep.images[2], x01[2].permute(1, 2, 0).numpy(), atol=1e-7)
    normalised = (x01 - 0.5) / 0.25
    rep_x = R.multiplicity_report(p, normalised, n_boot=20)
    assert rep_x.images.shape == (6, 32, 32, 3)
    assert rep_x.images.min() == 0.0 and rep_x.images.max() == 1.0  # rescaled per image
    gray = R.multiplicity_report(p, x01[:, :1], n_boot=20)
    assert gray.images.shape == (6, 32, 32)
    fig = R.prediction_gallery(rep.images, p, [5, 2], labels=[0, 1, 2, 1, 0, 2], ncols=2)
    drawn = [im.get_array() for ax in fig.axes for im in ax.get_images()]
    assert [a.shape for a in drawn] == [(32, 32, 3)] * 2
    plt.close("all")
    fig = rep.figure()
    assert any(im.get_array().ndim == 3 for ax in fig.axes for im in ax.get_images())
    plt.close("all")
