"""Datasets, non-IID partitions and the coordinators' root set.

Loaders read the standard on-disk formats, so a user points ``data_dir`` at an
existing copy and nothing is downloaded:

* ``digits``: scikit-learn's bundled UCI optical digits (8x8); needs no files at all,
  which makes it the embedded default.
* ``mnist`` / ``fashion-mnist``: the IDX files (``train-images-idx3-ubyte[.gz]`` ...),
  either directly in ``data_dir`` or in torchvision's ``MNIST/raw`` layout.
* ``cifar10``: the ``cifar-10-batches-py`` pickles, as torchvision's ``CIFAR10`` reads
  them.

Everything is returned as uint8/float arrays in memory and cached per process, since a
Flower simulation calls the client function once per round.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "Dataset",
    "dirichlet_partition",
    "load_dataset",
    "malicious_clients",
    "split_root",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")

_NORMALISATION = {  # per-channel mean/std of the training split
    "digits": ((0.5,), (0.5,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class Dataset:
    """A labelled image dataset held in memory, normalised float32 NCHW."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (C, H, W)."""
        return tuple(self.train_x.shape[1:])


def _normalise(images: np.ndarray, name: str) -> np.ndarray:
    """uint8/float NHWC or NHW images in [0, 1] scale -> normalised float32 NCHW."""
    x = images.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None, :, :]
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in _NORMALISATION[name])
    return (x - mean) / std


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): big-endian header, then raw uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8).reshape(count)
    raise ValueError(f"{path}: not an IDX image/label file (magic {magic})")


def _find_idx(data_dir: Path, stem: str, torchvision_folder: str) -> Path:
    candidates = [data_dir, data_dir / torchvision_folder / "raw"]
    for folder in candidates:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"{stem}[.gz] not found in {data_dir} or {candidates[1]}; point --data-dir at "
        "a folder holding the standard IDX files"
    )


def _load_idx_dataset(name: str, data_dir: Path) -> Dataset:
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    parts = {
        stem: _read_idx(_find_idx(data_dir, f"{stem}-idx{3 if 'images' in stem else 1}-ubyte", folder))
        for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels")
    }
    return Dataset(
        name=name,
        train_x=_normalise(parts["train-images"] / 255.0, name),
        train_y=parts["train-labels"].astype(np.int64),
        test_x=_normalise(parts["t10k-images"] / 255.0, name),
        test_y=parts["t10k-labels"].astype(np.int64),
    )


def _load_cifar10(data_dir: Path) -> Dataset:
    root = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for batch in names:
            path = root / batch
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: expected the cifar-10-batches-py pickles")
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            xs.append(np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry["labels"], np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return Dataset(
        name="cifar10",
        train_x=_normalise_chw(train_x),
        train_y=train_y,
        test_x=_normalise_chw(test_x),
        test_y=test_y,
    )


def _normalise_chw(images: np.ndarray) -> np.ndarray:
    mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in _NORMALISATION["cifar10"])
    return ((images.astype(np.float32) / 255.0) - mean) / std


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed, documented split
    test, train = order[:360], order[360:]
    return Dataset(
        name="digits",
        train_x=_normalise(images[train], "digits"),
        train_y=labels[train],
        test_x=_normalise(images[test], "digits"),
        test_y=labels[test],
    )


@lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) from ``data_dir`` (cached per process)."""
    if name == "digits":
        return _load_digits()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if not data_dir:
        raise ValueError(f"dataset {name!r} needs --data-dir (nothing is downloaded)")
    path = Path(data_dir).expanduser()
    if name == "cifar10":
        return _load_cifar10(path)
    return _load_idx_dataset(name, path)


def split_root(labels: np.ndarray, root_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``root_size`` class-balanced examples for the coordinators' root set.

    Returns ``(root_indices, remaining_indices)``. The root set models a small clean
    validation set that the operator of the committee provides (FLTrust's root data).
    """
    rng = np.random.default_rng([seed, 1])
    if root_size <= 0:
        return np.empty(0, np.int64), np.arange(len(labels))
    classes = np.unique(labels)
    per_class = max(1, root_size // len(classes))
    root = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    )[:root_size]
    mask = np.ones(len(labels), bool)
    mask[root] = False
    return np.sort(root), np.flatnonzero(mask)


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Split example indices among clients with per-class Dirichlet(alpha) proportions.

    Smaller ``alpha`` gives more skewed (non-IID) label distributions. Draws are
    repeated until every client holds at least ``min_size`` examples.
    """
    rng = np.random.default_rng([seed, 2])
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(f"could not give every client {min_size} examples at alpha={alpha}")


def malicious_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    """Partition ids of the malicious clients: ``round(fraction * n)`` drawn with ``seed``."""
    count = int(round(fraction * num_clients))
    rng = np.random.default_rng([seed, 3])
    return sorted(int(i) for i in rng.choice(num_clients, size=count, replace=False))
