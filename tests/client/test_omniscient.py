"""The full-knowledge evaluation device: attackers' replies replaced and re-signed; a real in-process run."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from bcsfl_flower.client.attacks import alie_z
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.inprocess import LocalGrid, run_inprocess
from bcsfl_flower.keys import key_path
from bcsfl_flower.omniscient import attach_full_knowledge, poison_replies
from bcsfl_flower.package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, metrics_hash, model_hash, numpy_to_arrays
from bcsfl_flower.settings import RunSettings

from message_kit import global_model, reply, signed_content

ATTACKERS = {"client-5", "client-6"}


def _replies(tmp_path, g, n=7, server_round=1):
    rng = np.random.default_rng(1)
    steps, out = {}, []
    for i in range(n):
        cid = f"client-{i}"
        key = SigningKey.load_or_create(key_path(tmp_path, cid))  # the file the client's node created
        steps[cid] = {k: (0.1 + 0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()}
        local = {k: g[k] + steps[cid][k] for k in g}
        out.append(reply(signed_content(key, local, client_id=cid, server_round=server_round,
                                        num_examples=50 + i, metrics={"train_loss": 0.5}), node_id=100 + i))
    return out


def _flat(tensors, g):
    return np.concatenate([np.asarray(tensors[k], np.float64).ravel() - g[k].astype(np.float64).ravel() for k in g])


def test_attackers_replies_carry_the_attack_signed_with_their_own_keys(tmp_path):
    g = global_model()
    replies = _replies(tmp_path, g)
    before = {m.content[PACKAGE_KEY]["client-id"]: (arrays_to_numpy(m.content["arrays"]), dict(m.content[PACKAGE_KEY]))
              for m in replies}
    honest = np.stack([_flat(before[f"client-{i}"][0], g) for i in range(5)])

    done = poison_replies(replies, g, "alie-full", ATTACKERS, key_dir=str(tmp_path), num_clients=7)

    assert sorted(done) == sorted(ATTACKERS)
    expected = honest.mean(0) - alie_z(7, 2) * honest.std(0)
    for m in replies:
        cid = m.content[PACKAGE_KEY]["client-id"]
        tensors = arrays_to_numpy(m.content["arrays"])
        package = ModelPackage.from_record(m.content[PACKAGE_KEY])
        if cid not in ATTACKERS:  # honest replies untouched
            assert dict(m.content[PACKAGE_KEY]) == before[cid][1]
            continue
        assert list(tensors) == list(g) and all(tensors[k].dtype == g[k].dtype for k in g)
        np.testing.assert_allclose(_flat(tensors, g), expected, atol=1e-6)
        old = ModelPackage.from_record(ConfigRecord(before[cid][1]))
        assert package.packet_id != old.packet_id and package.public_key == old.public_key
        assert package.signature_valid(old.public_key)  # signed by the attacker's own key
        assert package.model_hash == model_hash(tensors)
        assert (package.client_id, package.server_round, package.num_examples) == (cid, 1, old.num_examples)
        assert package.metrics_hash == metrics_hash({n: dict(r) for n, r in m.content.metric_records.items()})


def test_a_key_the_device_cannot_find_is_an_error(tmp_path):
    g = global_model()
    replies = _replies(tmp_path, g)
    key_path(tmp_path, "client-6").unlink()
    with pytest.raises(RuntimeError, match="no key of client-6"):
        poison_replies(replies, g, "ipm-full", ATTACKERS, key_dir=str(tmp_path), num_clients=7)


def test_attached_to_fedavg_the_aggregate_includes_the_attack(tmp_path):
    g = global_model()
    s = RunSettings(strategy="fedavg", attack="ipm100-full", malicious_fraction=0.3, bcsfl_key_dir=str(tmp_path))
    strategy = attach_full_knowledge(FedAvg(fraction_evaluate=0.0), s, 7)
    from bcsfl_flower.apps.task import client_ids, malicious_ids

    bad = set(client_ids(malicious_ids(s, 7)))
    assert len(bad) == 2
    replies = _replies(tmp_path, g)
    list(strategy.configure_train(1, numpy_to_arrays(g), ConfigRecord(), LocalGrid(app=None, num_nodes=7)))
    updates = {m.content[PACKAGE_KEY]["client-id"]: _flat(arrays_to_numpy(m.content["arrays"]), g) for m in replies}
    weights = {m.content[PACKAGE_KEY]["client-id"]: m.content["metrics"]["num-examples"] for m in replies}
    attack = -100.0 * np.mean([u for c, u in updates.items() if c not in bad], axis=0)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert sorted(strategy.full_knowledge[1]) == sorted(bad)
    # FedAvg's example-weighted mean, the attackers' updates being IPM's -100 x honest mean
    expected = sum(weights[c] * (attack if c in bad else u) for c, u in updates.items()) / sum(weights.values())
    np.testing.assert_allclose(_flat(arrays_to_numpy(arrays), g), expected, rtol=1e-4, atol=1e-5)


def test_refuses_what_it_cannot_attack(tmp_path):
    s = RunSettings(attack="alie-full", malicious_fraction=0.3, committee="nodes", bcsfl_key_dir=str(tmp_path))
    with pytest.raises(ValueError, match="committee server"):
        attach_full_knowledge(FedAvg(), s, 7)
    with pytest.raises(ValueError, match="not a full-knowledge attack"):
        attach_full_knowledge(FedAvg(), RunSettings(attack="alie"), 7)


@pytest.mark.slow
def test_inprocess_bcsfl_run_under_a_full_knowledge_attack(tmp_path):
    s = RunSettings(strategy="bcsfl", dataset="digits", num_clients=6, num_server_rounds=2, root_size=50,
                    malicious_fraction=0.34, attack="scaling-max", bcsfl_ledger=f"sqlite:///{tmp_path / 'l.db'}",
                    bcsfl_key_dir=str(tmp_path / "keys"), out=str(tmp_path / "out"))
    metrics = run_inprocess(s, quiet=True)
    bad = set(metrics["malicious_clients"])
    assert len(bad) == 2 and metrics["failed_rounds"] == 0
    for r in metrics["rounds"]:
        by_id = {d["client_id"]: d for d in r["decisions"]}
        norms = {by_id[c]["norm"] for c in bad}
        honest = sorted(d["norm"] for c, d in by_id.items() if c not in bad)
        # both attackers sent the largest norm the filter keeps: above every honest update, not clipped
        assert len(norms) == 1 and min(norms) > max(honest)
        assert all(by_id[c]["kept"] and by_id[c]["reason"] == "kept" for c in bad)
        assert min(norms) == pytest.approx(2 * float(np.median(honest + [np.inf] * 2)), rel=1e-3)
