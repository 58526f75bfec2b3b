"""What both apps need: a client's data partition, the root set, the test set."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..data import Dataset, dirichlet_partition, load_dataset, malicious_clients, split_root
from ..settings import RunSettings

__all__ = ["client_data", "client_ids", "make_root_set", "malicious_ids", "root_data"]


def _dataset(s: RunSettings) -> Dataset:
    return load_dataset(s.dataset, s.data_dir or None)


@lru_cache(maxsize=4)
def _split(dataset: str, data_dir: str, root_size: int, num_clients: int, alpha: float, seed: int):
    ds = load_dataset(dataset, data_dir or None)
    root, rest = split_root(ds.train_y, root_size, seed)
    parts = dirichlet_partition(ds.train_y[rest], num_clients, alpha, seed)
    return root, [rest[p] for p in parts]


def client_data(s: RunSettings, partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Training examples of one client (Dirichlet non-IID split of what the root set left)."""
    ds = _dataset(s)
    _, parts = _split(s.dataset, s.data_dir, s.root_size, num_partitions, s.dirichlet_alpha, s.seed)
    idx = parts[partition_id]
    return ds.train_x[idx], ds.train_y[idx]


def root_data(s: RunSettings, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """The coordinators' root set: ``root-size`` class-balanced training examples no client holds."""
    ds = _dataset(s)
    root, _ = _split(s.dataset, s.data_dir, s.root_size, num_partitions, s.dirichlet_alpha, s.seed)
    return ds.train_x[root], ds.train_y[root]


def malicious_ids(s: RunSettings, num_partitions: int) -> list[int]:
    """Partition ids that run the configured attack."""
    if s.attack == "none":
        return []
    return malicious_clients(num_partitions, s.malicious_fraction, s.seed)


def client_ids(partitions: list[int]) -> list[str]:
    """Client ids (as ``bcsfl_mod`` names them in simulation) of partitions."""
    return [f"client-{p}" for p in partitions]


def make_root_set(s: RunSettings, num_clients: int):
    """The coordinators' RootSet (None when ``root-size`` is 0); the same on server and nodes.

    Its update trains for as many SGD steps as an average client takes per round.
    """
    if s.root_size <= 0:
        return None
    from ..committee.rootset import RootSet
    from ..models import build_model

    x, y = root_data(s, num_clients)
    per_client = (len(_dataset(s).train_y) - s.root_size) / max(1, num_clients)
    # DP clients' rate is tuned for clipped, noisy gradients; unclipped root training at it
    # diverges, so the root set then trains like a non-DP client (the defaults)
    lr, batch = (RunSettings.learning_rate, RunSettings.batch_size) if s.dp_enabled else (s.learning_rate, s.batch_size)
    steps = max(1, int(round(s.local_epochs * per_client / batch)))
    return RootSet(lambda: build_model(s.dataset, variant=s.model_variant()), x, y, lr=lr, batch_size=batch,
                   seed=s.seed, steps=steps)
