"""BCSFL.aggregate_train on hand-built replies: verify, committee, ledger."""

import sqlite3

import numpy as np
from flwr.serverapp.strategy import FedAvg, Strategy

from bcsfl_flower import BCSFL
from bcsfl_flower.committee.coordinator import poisoned_candidate
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.package import arrays_to_numpy, model_hash

from .helpers import global_model, reply, signed_content

CLIENTS = [f"client-{i}" for i in range(8)]
KEYS = {c: SigningKey.from_seed(c.encode()) for c in CLIENTS}


def register_all(ledger):
    for c in CLIENTS:
        ledger.register_identity(c, KEYS[c].public_hex)


def honest_replies(g, server_round, flipped=(), rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()}
    out = []
    for i, c in enumerate(CLIENTS):
        step = {k: 0.05 * (direction[k] + 0.5 * rng.normal(size=v.shape)) for k, v in g.items()}
        if c in flipped:
            step = {k: -4 * v for k, v in step.items()}
        local = {k: (g[k] + step[k]).astype(np.float32) for k in g}
        out.append(reply(signed_content(KEYS[c], local, client_id=c, server_round=server_round,
                                        metrics={"train_loss": 1.0}), node_id=i + 1))
    return out


def run_round(strategy, g, server_round, replies):
    strategy._global = g  # what configure_train records from the global ArrayRecord
    return strategy.aggregate_train(server_round, replies)


def test_is_a_message_api_strategy_with_fedavg_arguments():
    import inspect

    assert issubclass(BCSFL, Strategy)
    fedavg = set(inspect.signature(FedAvg).parameters)
    assert fedavg <= set(inspect.signature(BCSFL).parameters)


def test_round_commits_block_with_reasons_and_returns_committed_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    strategy = BCSFL(ledger=url, committee_size=4)
    register_all(strategy.ledger)
    g = global_model()
    bad = reply(signed_content(SigningKey.from_seed(b"mallory"), g, client_id="client-0", server_round=1), node_id=99)
    replies = honest_replies(g, 1, flipped={"client-6", "client-7"}) + [bad]
    new_arrays, metrics = run_round(strategy, g, 1, replies)

    record = strategy.rounds[-1]
    assert set(record["rejected"]) >= {"client-6", "client-7"}
    assert sorted(record["accepted"]) == CLIENTS[:6]
    assert len(record["committee"]) == 4 and record["committed"]
    block = strategy.ledger.latest()
    assert block.sequence_no == 1
    reasons = {r["client_id"]: r["reason"] for r in block.data["rejected"]}
    assert "cosine" in reasons["client-6"] and "public key differs" in reasons["client-0"]
    assert block.data["quorum"]["value"] == model_hash(arrays_to_numpy(new_arrays))
    assert len(block.data["quorum"]["votes"]) >= 3
    assert set(block.data["identities"]) == set(CLIENTS)
    assert metrics is not None and "train_loss" in metrics
    assert verify_chain(strategy.ledger).ok

    # A second round links to the first; reopening the file keeps both blocks.
    g2 = arrays_to_numpy(new_arrays)
    run_round(strategy, g2, 2, honest_replies(g2, 2, rng_seed=1))
    strategy.ledger.close()
    with open_ledger(url) as reopened:
        assert reopened.height() == 3
        assert reopened.block(2).last_hash == reopened.block(1).hash
        assert verify_chain(reopened).ok


def test_stakes_move_with_decisions():
    strategy = BCSFL(ledger="memory", committee_size=4)
    register_all(strategy.ledger)
    g = global_model()
    run_round(strategy, g, 1, honest_replies(g, 1, flipped={"client-7"}))
    stakes = strategy.stakes.stakes
    assert stakes["client-7"] < strategy.stakes.policy.initial < stakes["client-1"]


def test_byzantine_coordinator_is_outvoted_and_loses_stake():
    strategy = BCSFL(ledger="memory", committee_size=len(CLIENTS),
                     byzantine_coordinators={"client-3": poisoned_candidate(-5.0)})
    register_all(strategy.ledger)
    g = global_model()
    honest_arrays, _ = run_round(strategy, g, 1, honest_replies(g, 1))
    record = strategy.rounds[-1]
    assert record["dissenters"] == ["client-3"]
    reference = BCSFL(ledger="memory", committee_size=len(CLIENTS))
    register_all(reference.ledger)
    clean_arrays, _ = run_round(reference, g, 1, honest_replies(g, 1))
    assert model_hash(arrays_to_numpy(honest_arrays)) == model_hash(arrays_to_numpy(clean_arrays))
    assert strategy.stakes.stakes["client-3"] < reference.stakes.stakes["client-3"]


def test_no_quorum_leaves_model_unchanged_and_commits_nothing():
    # Committee of all 8 (f = 2, quorum 5); 4 members each propose their own forgery.
    liars = {c: poisoned_candidate(-float(i + 2)) for i, c in enumerate(CLIENTS[:4])}
    strategy = BCSFL(ledger="memory", committee_size=len(CLIENTS), byzantine_coordinators=liars)
    register_all(strategy.ledger)
    g = global_model()
    new_arrays, _ = run_round(strategy, g, 1, honest_replies(g, 1))
    assert new_arrays is None
    assert strategy.ledger.height() == 1
    assert not strategy.rounds[-1]["committed"]


def test_tampering_with_the_sqlite_file_is_detected(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    strategy = BCSFL(ledger=url, committee_size=4)
    register_all(strategy.ledger)
    g = global_model()
    run_round(strategy, g, 1, honest_replies(g, 1))
    strategy.ledger.close()
    con = sqlite3.connect(tmp_path / "l.db")
    blob = bytearray(con.execute("select data from models limit 1").fetchone()[0])
    blob[-1] ^= 1
    con.execute("update models set data=?", (bytes(blob),))
    con.commit()
    con.close()
    with open_ledger(url) as tampered:
        report = verify_chain(tampered)
    assert not report.ok and report.first_bad_block == 1


def test_unsigned_and_error_replies_are_recorded_and_the_round_goes_on():
    from flwr.app import Error, Message, MetricRecord, RecordDict

    from bcsfl_flower.package import numpy_to_arrays

    strategy = BCSFL(ledger="memory", committee_size=4)
    register_all(strategy.ledger)
    g = global_model()
    unsigned = reply(RecordDict({"arrays": numpy_to_arrays(g), "metrics": MetricRecord({"num-examples": 5})}), node_id=50)
    failed = Message(metadata=reply(RecordDict(), node_id=51).metadata, error=Error(code=0, reason="client crashed"))
    new_arrays, _ = run_round(strategy, g, 1, honest_replies(g, 1) + [unsigned, failed])
    record = strategy.rounds[-1]
    assert new_arrays is not None and record["committed"]
    assert record["rejections"]["node-50"].startswith("unsigned")
    assert "client crashed" in record["rejections"]["node-51"]
    assert sorted(record["accepted"]) == CLIENTS


def test_committee_is_recomputable_from_the_chain_alone():
    from bcsfl_flower.committee.chain import recompute_committee

    strategy = BCSFL(ledger="memory", committee_size=4)
    register_all(strategy.ledger)
    g = global_model()
    for r in (1, 2, 3):
        arrays_r, _ = run_round(strategy, g, r, honest_replies(g, r, flipped={"client-5"}, rng_seed=r))
        g = arrays_to_numpy(arrays_r)
    for block in strategy.ledger.blocks(1):
        members = [m["member"] for m in block.data["committee"]]
        assert recompute_committee(strategy.ledger, block, strategy.stakes.policy, 4) == members
    assert strategy.ledger.latest().data["stakes"]["client-5"] < strategy.stakes.policy.initial


def test_pbft_committee_replaces_a_byzantine_primary_and_the_block_shows_the_view_change():
    honest = BCSFL(ledger="memory", committee_size=4)
    register_all(honest.ledger)
    byz = BCSFL(ledger="memory", committee_size=4, byzantine_first=1)
    register_all(byz.ledger)
    g = global_model()
    clean, _ = run_round(honest, g, 1, honest_replies(g, 1))
    attacked, _ = run_round(byz, g, 1, honest_replies(g, 1))
    assert model_hash(arrays_to_numpy(attacked)) == model_hash(arrays_to_numpy(clean))
    block = byz.ledger.latest()
    consensus = block.data["consensus"]
    assert consensus["protocol"] == "pbft" and consensus["view_changes"] >= 1 and consensus["commit_view"] >= 1
    from bcsfl_flower.consensus.quorum import QuorumCertificate as PbftCertificate, verify as verify_pbft

    keys = [m["public"] for m in block.data["committee"]]
    assert verify_pbft(PbftCertificate.from_json(consensus["commit_certificate"]), keys)
    primary = block.data["committee"][0]["member"]
    assert block.data["dissenters"] == [primary]
    assert honest.ledger.latest().data["consensus"]["view_changes"] == 0
    assert byz.stakes.stakes[primary] < honest.stakes.stakes[primary]
