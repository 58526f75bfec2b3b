"""Loaders read the real on-disk formats; partitions are disjoint and seeded."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from bcsfl_flower.data import dirichlet_partition, load_dataset, malicious_clients, split_root


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
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))


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
