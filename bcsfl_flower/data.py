"""Datasets, non-IID partitions and the coordinators' root set.

Loaders read the standard on-disk formats:

* ``digits``: scikit-learn's bundled UCI optical digits (8x8); needs no files at all,
  which makes it the embedded default.
* ``mnist`` / ``fashion-mnist``: the four IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``), flat or in torchvision's ``MNIST/raw`` /
  ``FashionMNIST/raw`` layout.
* ``cifar10``: the ``cifar-10-batches-py`` pickles, as torchvision's ``CIFAR10`` reads
  them.

Where the files are looked for (:func:`dataset_dir`):

1. ``data_dir`` (``--data-dir``, run-config ``data-dir``) when given: the folder itself,
   its torchvision layout, or its ``<name>/`` subfolder (so a folder holding ``mnist/``
   and ``fashion-mnist/`` works as well). Nothing is downloaded into a folder you name.
2. Otherwise the data home: ``$BCSFL_DATA_DIR`` when set, else ``~/.cache/bcsfl/datasets``.
   Each data set lives in its subfolder (``mnist/``, ``fashion-mnist/``, ``cifar10/``),
   flat or in torchvision's layout. A data set missing there is downloaded into it with
   torchvision's ``MNIST``/``FashionMNIST``/``CIFAR10`` classes (``download=True``),
   unless ``BCSFL_DOWNLOAD=0``.

When the files cannot be found or fetched, :class:`DatasetUnavailable` (a
``FileNotFoundError`` and a ``ValueError``) says in one line where they were looked for
and how to provide them.

Everything is returned as uint8/float arrays in memory and cached per process, since a
Flower simulation calls the client function once per round.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_HOME",
    "DOWNLOAD_ENV",
    "Dataset",
    "DatasetUnavailable",
    "data_home",
    "dataset_dir",
    "dirichlet_partition",
    "load_dataset",
    "malicious_clients",
    "split_root",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")

#: A folder holding ``mnist/``, ``fashion-mnist/`` (and ``cifar10/``): read, and downloaded into.
DATA_DIR_ENV = "BCSFL_DATA_DIR"
#: ``BCSFL_DOWNLOAD=0`` turns downloads off (read only what is on disk).
DOWNLOAD_ENV = "BCSFL_DOWNLOAD"
#: The data home when ``$BCSFL_DATA_DIR`` is not set.
DEFAULT_DATA_HOME = Path("~/.cache/bcsfl/datasets")
#: Seconds a download may wait on the network before it gives up.
DOWNLOAD_TIMEOUT = 60.0

_NORMALISATION = {  # per-channel mean/std of the training split
    "digits": ((0.5,), (0.5,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DatasetUnavailable(FileNotFoundError, ValueError):
    """A data set's files are not where they were looked for and could not be fetched.

    The message is one line: where it looked, and how to provide the files. It is a
    ``ValueError`` too, so code that reports bad settings in one line reports this too.
    """


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


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _holds(name: str, folder: Path) -> bool:
    """Whether ``folder`` itself holds every file of ``name`` (no subfolders searched)."""
    if name == "cifar10":
        return all((folder / batch).is_file() for batch in _CIFAR_BATCHES)
    return all(_idx_file(folder, stem) is not None for stem in _IDX_STEMS)


def _candidates(name: str, folder: Path) -> list[Path]:
    """Where under ``folder`` the files of ``name`` may sit, most specific last."""
    inner = "cifar-10-batches-py" if name == "cifar10" else f"{_TORCHVISION_FOLDER[name]}/raw"
    return [folder, folder / inner, folder / name, folder / name / inner]


def _find(name: str, folder: Path) -> Path | None:
    return next((c for c in _candidates(name, folder) if _holds(name, c)), None)


def _expected(name: str) -> str:
    if name == "cifar10":
        return "cifar-10-batches-py/{data_batch_1..5,test_batch}"
    return ", ".join(f"{stem}[.gz]" for stem in _IDX_STEMS)


def data_home() -> Path:
    """``$BCSFL_DATA_DIR`` if set, else ``~/.cache/bcsfl/datasets``: the folder of data sets."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_HOME).expanduser()


def _downloads_on() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def _quiet_network(timeout: float) -> Iterator[None]:
    """torchvision prints each URL and a progress bar; keep them off the user's terminal."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        socket.setdefaulttimeout(old)


def _download(name: str, target: Path) -> None:
    """Fetch ``name`` with torchvision into ``target`` (a temporary folder first, then renamed).

    Several processes (a simulation's workers) may race here: each downloads into its own
    temporary folder beside ``target`` and the first rename wins.
    """
    from .torchvision_guard import import_torchvision

    datasets = import_torchvision().datasets
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=target.parent))
    try:
        with _quiet_network(DOWNLOAD_TIMEOUT):
            cls(str(tmp), train=False, download=True)
        target.mkdir(exist_ok=True)
        for entry in tmp.iterdir():  # MNIST/ or FashionMNIST/ or cifar-10-batches-py/
            if entry.is_dir() and not (target / entry.name).exists():
                with contextlib.suppress(OSError):  # another process renamed its copy first
                    os.rename(entry, target / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= 200 else text[:197] + "..."


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None, *, download: bool | None = None) -> Path | None:
    """The folder holding ``name``'s files; ``None`` for ``digits``, which needs none.

    With ``data_dir``, only there (and its torchvision layout or ``<name>/`` subfolder).
    Without it, in ``data_home()/<name>``, downloading it there first when it is missing
    and ``download`` (default: unless ``BCSFL_DOWNLOAD=0``) allows. Call it before a run
    starts: it raises :class:`DatasetUnavailable` with a one-line message.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if name == "digits":
        return None
    if data_dir:
        folder = Path(data_dir).expanduser()
        found = _find(name, folder)
        if found is None:
            where = f"{folder} (no such folder)" if not folder.exists() else f"{folder} (nor its {name}/ or torchvision subfolder)"
            raise DatasetUnavailable(
                f"{name}: {_expected(name)} not found in {where}; point --data-dir at the folder holding them, "
                f"or leave --data-dir out to use ${DATA_DIR_ENV}/{name} or {DEFAULT_DATA_HOME}/{name} (downloaded when online)")
        return found
    home = data_home()
    target = home / name
    found = _find(name, target)
    if found is not None:
        return found
    how = (f"put {_expected(name)} in {target}, set {DATA_DIR_ENV} to a folder holding "
           f"mnist/ and fashion-mnist/, or pass --data-dir FOLDER")
    if not (_downloads_on() if download is None else download):
        raise DatasetUnavailable(f"{name}: not found in {target} and downloads are off ({DOWNLOAD_ENV}=0); {how}")
    try:
        _download(name, target)
    except Exception as err:  # noqa: BLE001 - any failure to fetch becomes the one-line message
        raise DatasetUnavailable(f"{name}: not found in {target} and the download failed ({_reason(err)}); {how}") from None
    found = _find(name, target)
    if found is None:
        raise DatasetUnavailable(f"{name}: the download into {target} left no {_expected(name)}; {how}")
    print(f"bcsfl: downloaded {name} into {target}", file=sys.stderr)
    return found


def _load_idx_dataset(name: str, folder: Path) -> Dataset:
    parts = {stem: _read_idx(_idx_file(folder, stem)) for stem in _IDX_STEMS}
    return Dataset(
        name=name,
        train_x=_normalise(parts["train-images-idx3-ubyte"] / 255.0, name),
        train_y=parts["train-labels-idx1-ubyte"].astype(np.int64),
        test_x=_normalise(parts["t10k-images-idx3-ubyte"] / 255.0, name),
        test_y=parts["t10k-labels-idx1-ubyte"].astype(np.int64),
    )


def _load_cifar10(root: Path) -> Dataset:
    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for batch in names:
            with open(root / batch, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            xs.append(np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry["labels"], np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = read(list(_CIFAR_BATCHES[:-1]))
    test_x, test_y = read([_CIFAR_BATCHES[-1]])
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
def _load_from(name: str, folder: str | None) -> Dataset:
    if name == "digits":
        return _load_digits()
    if name == "cifar10":
        return _load_cifar10(Path(folder))
    return _load_idx_dataset(name, Path(folder))


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) from where :func:`dataset_dir` finds it (cached per process)."""
    folder = dataset_dir(name, data_dir)
    return _load_from(name, str(folder) if folder is not None else None)


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
