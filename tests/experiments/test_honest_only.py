"""The honest-only FedAvg reference: FedAvg over exactly the replies of clients not excluded."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from bcsfl_flower.apps.server_app import build_strategy
from bcsfl_flower.apps.task import client_ids, malicious_ids
from bcsfl_flower.baselines.honest_only import HonestOnlyFedAvg
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.inprocess import LocalGrid
from bcsfl_flower.package import arrays_to_numpy, numpy_to_arrays
from bcsfl_flower.settings import RunSettings

from message_kit import global_model, reply, signed_content


def _replies(g, offsets):
    out = []
    for i, (cid, offset) in enumerate(offsets.items()):
        local = {k: (g[k] + offset).astype(np.float32) for k in g}
        examples = 10 * (int(cid.split("-")[1]) + 1)  # client-k holds 10(k+1) examples
        out.append(reply(signed_content(SigningKey.from_seed(cid.encode()), local, client_id=cid, server_round=1,
                                        num_examples=examples), node_id=i + 1))
    return out


def _aggregate(strategy, g, replies):
    strategy.configure_train(1, numpy_to_arrays(g), ConfigRecord(), LocalGrid(app=None, num_nodes=len(replies)))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays_to_numpy(arrays)


def test_aggregate_is_fedavg_over_the_clients_not_excluded():
    g = global_model()
    offsets = {"client-0": 0.1, "client-1": 0.3, "client-2": -50.0, "client-3": 0.2}
    common = dict(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    oracle = _aggregate(HonestOnlyFedAvg(excluded=["client-2"], **common), g, _replies(g, offsets))
    honest = {k: v for k, v in offsets.items() if k != "client-2"}
    expected = _aggregate(FedAvg(**common), g, _replies(g, honest))
    everyone = _aggregate(FedAvg(**common), g, _replies(g, offsets))
    for name in g:
        np.testing.assert_allclose(oracle[name], expected[name], rtol=1e-6)
        assert not np.allclose(oracle[name], everyone[name])  # the attacker's -50 would have counted
    # weights by examples, as FedAvg: (0.1*10 + 0.3*20 + 0.2*40) / 70
    name = next(iter(g))
    np.testing.assert_allclose(oracle[name] - g[name], 15.0 / 70.0, rtol=1e-5)


def test_server_app_excludes_the_runs_attackers():
    s = RunSettings(strategy="fedavg-honest", dataset="digits", malicious_fraction=0.3, attack="sign-flip", seed=8)
    strategy = build_strategy(s, num_clients=10)
    assert isinstance(strategy, HonestOnlyFedAvg)
    attackers = set(client_ids(malicious_ids(s, 10)))
    assert len(attackers) == 3 and strategy.excluded == attackers
    clean = build_strategy(RunSettings(strategy="fedavg-honest", dataset="digits"), num_clients=10)
    assert clean.excluded == frozenset()
