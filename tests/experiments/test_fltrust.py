"""FLTrust on hand-built replies: zero trust for a sign-flipped update, norms rescaled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from bcsfl_flower.baselines.fltrust import FLTrust, fltrust_aggregate
from bcsfl_flower.committee.rootset import RootSet
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.inprocess import LocalGrid
from bcsfl_flower.package import arrays_to_numpy, numpy_to_arrays

from message_kit import global_model, reply, signed_content


class FixedRoot:
    """A root set whose update is a fixed direction (the math, without training)."""

    def __init__(self, direction):
        self.direction = direction
        self.calls = []

    def update(self, global_tensors, server_round):
        self.calls.append(server_round)
        return {k: v.astype(np.float64) for k, v in self.direction.items()}


def _replies(g, steps, server_round=1):
    out = []
    for i, (cid, step) in enumerate(steps.items()):
        local = {k: (g[k] + step[k]).astype(np.float32) for k in g}
        key = SigningKey.from_seed(cid.encode())
        out.append(reply(signed_content(key, local, client_id=cid, server_round=server_round), node_id=i + 1))
    return out


def _run(strategy, g, server_round, replies):
    grid = LocalGrid(app=None, num_nodes=max(2, len(replies)))  # no message is sent: only nodes to sample
    strategy.configure_train(server_round, numpy_to_arrays(g), ConfigRecord(), grid)  # records the global model
    return strategy.aggregate_train(server_round, replies)


def test_is_a_fedavg_subclass():
    assert issubclass(FLTrust, FedAvg)


def test_sign_flipped_update_gets_zero_trust_and_norms_are_rescaled():
    g = global_model()
    rng = np.random.default_rng(0)
    root = {k: rng.normal(size=v.shape) * 0.1 for k, v in g.items()}
    honest = {k: v + 0.02 * rng.normal(size=v.shape) for k, v in root.items()}
    steps = {
        "client-0": {k: 1.0 * v for k, v in honest.items()},
        "client-1": {k: 10.0 * v for k, v in honest.items()},   # same direction, 10x longer
        "client-2": {k: -4.0 * v for k, v in honest.items()},   # sign flip
    }
    strategy = FLTrust(root_set=FixedRoot(root))
    new_arrays, metrics = _run(strategy, g, 1, _replies(g, steps))
    new = arrays_to_numpy(new_arrays)
    record = strategy.rounds[-1]
    trust = {d["client_id"]: d["trust"] for d in record["decisions"]}
    assert trust["client-2"] == 0.0
    assert trust["client-0"] == pytest.approx(trust["client-1"]) and trust["client-0"] > 0.9
    assert record["rejected"] == ["client-2"] and record["accepted"] == ["client-0", "client-1"]
    # Both kept updates point the same way and are rescaled to the root norm: the step
    # is the honest direction at the root update's length, whatever their own norms.
    step = np.concatenate([(new[k].astype(np.float64) - g[k]).ravel() for k in g])
    root_flat = np.concatenate([root[k].ravel() for k in g])
    honest_flat = np.concatenate([honest[k].ravel() for k in g])
    assert np.linalg.norm(step) == pytest.approx(np.linalg.norm(root_flat), rel=1e-4)
    expected = honest_flat * np.linalg.norm(root_flat) / np.linalg.norm(honest_flat)
    np.testing.assert_allclose(step, expected, rtol=1e-3, atol=1e-6)
    assert metrics is not None
    assert set(new) == set(g) and all(new[k].dtype == g[k].dtype for k in g)


def test_all_zero_trust_leaves_model_unchanged():
    g = global_model()
    root = {k: np.ones_like(v, dtype=np.float64) for k, v in g.items()}
    steps = {"client-0": {k: -np.ones_like(v) for k, v in g.items()}}
    strategy = FLTrust(root_set=FixedRoot(root))
    new = arrays_to_numpy(_run(strategy, g, 1, _replies(g, steps))[0])
    for k in g:
        np.testing.assert_allclose(new[k], g[k], atol=1e-7)


def test_flat_rule_matches_the_paper():
    root = np.array([3.0, 4.0])                     # norm 5
    updates = np.array([[0.6, 0.8], [0.0, 2.0], [-3.0, -4.0]])
    step, trust, cos = fltrust_aggregate(updates, root)
    np.testing.assert_allclose(trust, [1.0, 0.8, 0.0])
    rescaled = np.array([[3.0, 4.0], [0.0, 5.0]])
    np.testing.assert_allclose(step, (1.0 * rescaled[0] + 0.8 * rescaled[1]) / 1.8)
    assert cos[2] == pytest.approx(-1.0)


def test_with_a_real_root_set():
    """The RootSet the server app builds plugs in: its update trains a tiny model."""
    torch.manual_seed(0)

    def model_fn():
        return torch.nn.Linear(6, 4)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int64)
    root_set = RootSet(model_fn, x, y, steps=4, lr=0.1, batch_size=10, seed=0)
    g = {k: v.detach().numpy().copy() for k, v in model_fn().state_dict().items()}
    root = root_set.update(g, 1)
    steps = {"client-0": {k: 2.0 * v for k, v in root.items()}, "client-1": {k: -v for k, v in root.items()}}
    strategy = FLTrust(root_set=root_set)
    _run(strategy, g, 1, _replies(g, steps))
    trust = {d["client_id"]: d["trust"] for d in strategy.rounds[-1]["decisions"]}
    assert trust["client-1"] == 0.0 and trust["client-0"] == pytest.approx(1.0, abs=1e-4)
