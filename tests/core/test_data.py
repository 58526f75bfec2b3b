"""Loaders read the real on-disk formats; partitions are disjoint and seeded."""

import functools
import gzip
import hashlib
import http.server
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pytest

import bcsfl_flower.data as data_module
from bcsfl_flower.data import (
    DATA_DIR_ENV,
    DOWNLOAD_ENV,
    DatasetUnavailable,
    dataset_dir,
    dirichlet_partition,
    load_dataset,
    malicious_clients,
    split_root,
)
from bcsfl_flower.data import data_home as data_home_of
from bcsfl_flower.torchvision_guard import import_torchvision


def write_idx(folder, prefix, images, labels, compress):
    folder.mkdir(parents=True, exist_ok=True)
    img = struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes()
    lab = struct.pack(">II", 2049, len(labels)) + labels.tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_idx_loader_reads_standard_files(tmp_path, layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = (np.arange(30) % 10).astype(np.uint8)
    folder = tmp_path if layout == "flat-gz" else tmp_path / "MNIST" / "raw"
    write_idx(folder, "train", images, labels, compress=layout == "flat-gz")
    write_idx(folder, "t10k", images[:10], labels[:10], compress=layout == "flat-gz")
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.train_y, labels)
    expected = (images[3].astype(np.float32) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.train_x[3, 0], expected, rtol=1e-5)


def test_cifar10_loader_reads_python_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]}
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_y.tolist()[:4] == [1, 2, 3, 4]


def test_missing_files_name_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value) and "no such folder" in str(err.value)


def test_digits_needs_no_files_and_partitions_are_disjoint():
    ds = load_dataset("digits")
    root, rest = split_root(ds.train_y, 50, seed=7)
    assert len(root) == 50 and not set(root) & set(rest)
    assert len(np.unique(ds.train_y[root])) == 10
    parts = dirichlet_partition(ds.train_y[rest], 10, alpha=0.5, seed=7)
    joined = np.concatenate(parts)
    assert len(joined) == len(rest) == len(np.unique(joined))
    assert all(len(p) >= 10 for p in parts)
    again = dirichlet_partition(ds.train_y[rest], 10, alpha=0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    skewed = dirichlet_partition(ds.train_y[rest], 10, alpha=0.05, seed=7)
    iid = dirichlet_partition(ds.train_y[rest], 10, alpha=100.0, seed=7)
    classes = lambda ps: np.mean([len(np.unique(ds.train_y[rest][p])) for p in ps])  # noqa: E731
    assert classes(skewed) < classes(iid)
    assert malicious_clients(20, 0.3, 7) == malicious_clients(20, 0.3, 7) and len(malicious_clients(20, 0.3, 7)) == 6


# --- where the files come from: --data-dir, $BCSFL_DATA_DIR, or a download into the data home ---

def write_mnist(folder, compress=True, count=30):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    write_idx(folder, "train", images, labels, compress)
    write_idx(folder, "t10k", images[:10], labels[:10], compress)
    return labels


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty $BCSFL_DATA_DIR; downloads on unless a test turns them off."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(home))
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    return home


def test_the_data_home_holds_one_subfolder_per_dataset(data_home):
    labels = write_mnist(data_home / "mnist")
    write_mnist(data_home / "fashion-mnist" / "FashionMNIST" / "raw", compress=False)  # torchvision's layout
    assert np.array_equal(load_dataset("mnist").train_y, labels)
    assert load_dataset("fashion-mnist").test_x.shape == (10, 1, 28, 28)
    assert dataset_dir("mnist") == data_home / "mnist"
    # --data-dir may name that same folder of data sets, or the data set's own folder
    assert dataset_dir("fashion-mnist", str(data_home)) == data_home / "fashion-mnist" / "FashionMNIST" / "raw"
    assert dataset_dir("mnist", str(data_home / "mnist")) == data_home / "mnist"
    assert dataset_dir("digits") is None


def test_without_bcsfl_data_dir_the_home_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_home_of() == tmp_path / ".cache" / "bcsfl" / "datasets"


def test_a_named_data_dir_is_never_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_download", lambda *a: pytest.fail("downloaded into --data-dir"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("mnist", str(empty))
    message = str(err.value)
    assert "\n" not in message and "--data-dir" in message and str(empty) in message
    assert isinstance(err.value, ValueError)  # reported like any bad setting
    assert list(empty.iterdir()) == []


def test_offline_with_downloads_off_one_line_says_how_to_get_the_data(data_home, monkeypatch):
    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert "\n" not in message
    assert "downloads are off" in message and str(data_home / "fashion-mnist") in message
    assert DATA_DIR_ENV in message and "--data-dir" in message and "t10k-labels-idx1-ubyte" in message


def _dead_url() -> str:
    """A local address nothing listens on: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_offline_a_failed_download_is_one_line_and_leaves_nothing_behind(data_home, monkeypatch):
    # The real download path: torchvision's MNIST with download=True, its mirrors pointed at a
    # local port nothing listens on (this machine has no network; nothing is mocked but the URL).
    mnist = import_torchvision().datasets.MNIST
    monkeypatch.setattr(mnist, "mirrors", [_dead_url()])
    started = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("mnist")
    assert time.perf_counter() - started < 20
    message = str(err.value)
    assert "\n" not in message
    assert "download failed" in message and "refused" in message.lower()
    assert str(data_home / "mnist") in message and DATA_DIR_ENV in message and "--data-dir" in message
    assert list(data_home.iterdir()) == []  # no half-downloaded folder


def test_a_missing_dataset_is_downloaded_into_the_data_home(data_home, monkeypatch, tmp_path):
    # torchvision's MNIST download (mirrors, md5 checks, gunzip), served from a local HTTP server
    # holding small files in the same format: the path a user with a network takes.
    served = tmp_path / "served"
    labels = write_mnist(served)
    mnist = import_torchvision().datasets.MNIST
    resources = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(served.iterdir())]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(mnist, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
        monkeypatch.setattr(mnist, "resources", resources)
        ds = load_dataset("mnist")
    finally:
        server.shutdown()
        server.server_close()
    assert np.array_equal(ds.train_y, labels) and ds.test_x.shape == (10, 1, 28, 28)
    assert dataset_dir("mnist") == data_home / "mnist" / "MNIST" / "raw"
    assert [p.name for p in data_home.iterdir()] == ["mnist"]  # the temporary folder is gone
