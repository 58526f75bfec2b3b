"""BCSFL.aggregate_train on hand-built replies: verify, the chain's committee, certified blocks."""

import logging
import sqlite3

import numpy as np
from flwr.serverapp.strategy import FedAvg, Strategy

from bcsfl_flower import BCSFL
from bcsfl_flower.committee.coordinator import poisoned_candidate
from bcsfl_flower.committee.filter import FilterConfig
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Certificate, verify
from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.package import arrays_to_numpy, canonical_bytes, model_hash

from message_kit import chartered_strategy, global_model, reply, signed_content

CLIENTS = [f"client-{i}" for i in range(8)]


def honest_replies(keys, g, server_round, flipped=(), rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()}
    out = []
    for i, c in enumerate(sorted(keys)):
        step = {k: 0.05 * (direction[k] + 0.5 * rng.normal(size=v.shape)) for k, v in g.items()}
        if c in flipped:
            step = {k: -4 * v for k, v in step.items()}
        local = {k: (g[k] + step[k]).astype(np.float32) for k in g}
        out.append(reply(signed_content(keys[c], local, client_id=c, server_round=server_round,
                                        metrics={"train_loss": 1.0}), node_id=i + 1))
    return out


def run_round(strategy, g, server_round, replies):
    strategy.bootstrap(g)  # what configure_train does with the global ArrayRecord
    return strategy.aggregate_train(server_round, replies)


def certified(ledger, block):
    """Check a round block's certificate against the committee the chain drew before it."""
    before = ledger.state_at(block.sequence_no - 1)
    cert = Certificate.from_json(block.data["certificate"])
    verify(cert, cert.statement, before.committee())
    return before


def test_is_a_message_api_strategy_with_fedavg_arguments():
    import inspect

    assert issubclass(BCSFL, Strategy)
    fedavg = set(inspect.signature(FedAvg).parameters)
    assert fedavg <= set(inspect.signature(BCSFL).parameters)


def test_bootstrap_installs_a_charter_sized_to_the_model(tmp_path):
    g = global_model()
    strategy, _, authority = chartered_strategy(tmp_path, CLIENTS[:4], g)
    charter = strategy.ledger.state().charter
    assert charter.enrolment_key == authority.public_hex and charter.committee_size == 4
    assert charter.max_model_bytes == len(canonical_bytes(g))
    strategy.bootstrap(g)  # a second call changes nothing
    assert strategy.ledger.block(1).data["charter"] == charter.to_json()


def test_round_commits_certified_block_with_reasons_and_returns_committed_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, ledger=url)
    forged = reply(signed_content(SigningKey.from_seed(b"mallory"), g, client_id="client-0", server_round=1), node_id=99)
    replies = honest_replies(keys, g, 1, flipped={"client-6", "client-7"}) + [forged]
    new_arrays, metrics = run_round(strategy, g, 1, replies)

    record = strategy.rounds[-1]
    assert record["committed"] and len(record["committee"]) == 4
    assert set(record["rejected"]) >= {"client-6", "client-7"}
    assert sorted(record["accepted"]) == CLIENTS[:6]
    block = strategy.ledger.latest()
    data = block.data
    assert data["model-params"] == model_hash(arrays_to_numpy(new_arrays))
    assert [i["client_id"] for i in data["inputs"]] == CLIENTS
    # The forgery never reached the chain's pool: refused by the relay, with its reason in the round's record.
    assert data["refused"] == []
    assert record["rejections"]["client-0"] == "public key differs from the registered one"
    assert {d["client_id"]: d["kept"] for d in data["decisions"]}["client-6"] is False
    assert "cosine" in next(d["reason"] for d in data["decisions"] if d["client_id"] == "client-6")
    before = certified(strategy.ledger, block)
    assert data["committee"] == list(before.committee())
    assert len(data["certificate"]["signatures"]) == 4
    # The forged header named client-0: its owner's stake rose (kept), not fell.
    stakes = strategy.ledger.state().stakes()
    assert stakes["client-0"] > before.stakes()["client-0"]
    assert metrics is not None and "train_loss" in metrics
    assert verify_chain(strategy.ledger).ok

    # A second round links to the first; reopening the file keeps both.
    g2 = arrays_to_numpy(new_arrays)
    run_round(strategy, g2, 2, honest_replies(keys, g2, 2, rng_seed=1))
    assert strategy.rounds[-1]["committed"]
    height = strategy.ledger.height()
    strategy.ledger.close()
    with open_ledger(url) as reopened:
        assert reopened.height() == height and reopened.state().round == 2
        assert reopened.latest().last_hash == reopened.block(height - 2).hash
        assert verify_chain(reopened).ok


def test_stakes_move_only_with_certified_decisions(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    run_round(strategy, g, 1, honest_replies(keys, g, 1, flipped={"client-7"}))
    stakes = strategy.ledger.state().stakes()
    initial = strategy.ledger.state().charter.policy.initial
    assert stakes["client-7"] < initial < stakes["client-1"]
    assert strategy.ledger.latest().data["stakes"] == stakes


def test_byzantine_coordinator_is_outvoted_and_recorded_as_dissent(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path / "byz", CLIENTS, g, committee_size=len(CLIENTS),
                                           byzantine_coordinators={"client-3": poisoned_candidate(-5.0)})
    attacked, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    assert strategy.rounds[-1]["dissenters"] == ["client-3"]
    block = strategy.ledger.latest()
    assert [d["member"] for d in block.data["dissent"]] == ["client-3"]
    assert "client-3" not in {s["member"] for s in block.data["certificate"]["signatures"]}
    reference, ref_keys, _ = chartered_strategy(tmp_path / "ref", CLIENTS, g, committee_size=len(CLIENTS))
    clean, _ = run_round(reference, g, 1, honest_replies(ref_keys, g, 1))
    assert model_hash(arrays_to_numpy(attacked)) == model_hash(arrays_to_numpy(clean))


def test_no_quorum_leaves_model_unchanged_and_commits_nothing(tmp_path):
    # Committee of all 8 (f = 2, quorum 5); 4 members each propose their own forgery.
    liars = {c: poisoned_candidate(-float(i + 2)) for i, c in enumerate(CLIENTS[:4])}
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, committee_size=len(CLIENTS),
                                           byzantine_coordinators=liars)
    height = strategy.ledger.height()
    new_arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    assert new_arrays is None
    # Only the round's pool was written (the packages are on the chain); no round block.
    assert strategy.ledger.height() == height + 1 and "round" not in strategy.ledger.latest().data
    assert not strategy.rounds[-1]["committed"] and "no quorum" in strategy.rounds[-1]["reason"]


def test_a_committee_below_four_fails_the_round_loudly(tmp_path, caplog):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS[:3], g)
    height = strategy.ledger.height()
    with caplog.at_level(logging.ERROR):
        new_arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    assert new_arrays is None and strategy.ledger.height() == height + 1  # the pool, no round block
    assert "round" not in strategy.ledger.latest().data
    reason = strategy.rounds[-1]["reason"]
    assert "only 3 of 3 enrolled clients can take a seat" in reason and "needs 4" in reason
    assert any("not committed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_a_seat_needs_a_kept_update_once_enough_clients_have_taken_part(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS[:4], g)
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1, flipped={"client-3"}))
    assert arrays is not None and strategy.rounds[-1]["rejected"] == ["client-3"]
    # Three have taken part, fewer than the committee of four: everyone enrolled stays eligible.
    assert "client-3" in strategy.ledger.state().eligible()
    g2 = arrays_to_numpy(arrays)
    assert run_round(strategy, g2, 2, honest_replies(keys, g2, 2))[0] is not None
    assert strategy.ledger.state().eligible().keys() == set(CLIENTS[:4])


def test_a_client_that_never_had_an_update_kept_takes_no_seat(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1, flipped={CLIENTS[-1]}))
    assert strategy.rounds[-1]["rejected"] == [CLIENTS[-1]]
    state = strategy.ledger.state()
    assert CLIENTS[-1] not in state.eligible() and CLIENTS[-1] not in state.committee()


def test_members_sign_only_with_their_registered_keys_from_the_key_dir(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    committee = list(strategy.ledger.state().committee())
    (tmp_path / "keys" / f"{committee[1]}.key").unlink()  # this member's key is not on this machine
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    assert arrays is not None
    signers = [s["member"] for s in strategy.ledger.latest().data["certificate"]["signatures"]]
    assert len(signers) == 3 and committee[1] not in signers
    g2 = arrays_to_numpy(arrays)
    for m in list(strategy.ledger.state().committee())[:2]:
        (tmp_path / "keys" / f"{m}.key").unlink(missing_ok=True)
    assert run_round(strategy, g2, 2, honest_replies(keys, g2, 2))[0] is None


def test_tampering_with_the_sqlite_file_is_detected(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, ledger=url)
    run_round(strategy, g, 1, honest_replies(keys, g, 1))
    seq = strategy.ledger.latest().sequence_no
    strategy.ledger.close()
    con = sqlite3.connect(tmp_path / "l.db")
    blob = bytearray(con.execute("select data from models limit 1").fetchone()[0])
    blob[-1] ^= 1
    con.execute("update models set data=?", (bytes(blob),))
    con.commit()
    con.close()
    with open_ledger(url) as tampered:
        report = verify_chain(tampered)
    # Every stored model was overwritten: the first block naming one is the round's pool (the clients' updates).
    assert not report.ok and report.first_bad_block == seq - 1 and "does not hash to its key" in report.reason


def test_unsigned_and_error_replies_are_recorded_and_the_round_goes_on(tmp_path):
    from flwr.app import Error, Message, MetricRecord, RecordDict

    from bcsfl_flower.package import numpy_to_arrays

    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    unsigned = reply(RecordDict({"arrays": numpy_to_arrays(g), "metrics": MetricRecord({"num-examples": 5})}), node_id=50)
    failed = Message(metadata=reply(RecordDict(), node_id=51).metadata, error=Error(code=0, reason="client crashed"))
    new_arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1) + [unsigned, failed])
    record = strategy.rounds[-1]
    assert new_arrays is not None and record["committed"]
    assert record["rejections"]["node-50"].startswith("unsigned")
    assert "client crashed" in record["rejections"]["node-51"]
    assert sorted(record["accepted"]) == CLIENTS
    # Neither is a signed package: neither enters the chain's pool, so the block refuses nothing.
    assert strategy.ledger.latest().data["refused"] == []


def test_every_round_is_certified_by_the_committee_the_chain_draws(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    for r in (1, 2, 3):
        arrays_r, _ = run_round(strategy, g, r, honest_replies(keys, g, r, flipped={"client-5"}, rng_seed=r))
        g = arrays_to_numpy(arrays_r)
    rounds = [b for b in strategy.ledger.blocks(1) if "round" in b.data]
    assert [b.data["round"] for b in rounds] == [1, 2, 3]
    for block in rounds:
        before = certified(strategy.ledger, block)
        assert block.data["committee"] == list(before.committee())
    assert strategy.ledger.state().stakes()["client-5"] < strategy.ledger.state().charter.policy.initial


def test_first_use_enrolment_on_a_memory_ledger(tmp_path):
    g = global_model()
    key_dir = tmp_path / "keys"
    keys = {c: SigningKey.load_or_create(key_dir / f"{c}.key") for c in CLIENTS[:5]}
    strategy = BCSFL(ledger="memory", key_dir=str(key_dir), enrollment="first-use",
                     enrolment_key=str(key_dir / "enrolment.key"))
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    assert arrays is not None
    assert {c: strategy.ledger.identity(c) for c in keys} == {c: k.public_hex for c, k in keys.items()}
    assert (key_dir / "enrolment.key").is_file()  # created for the fresh ledger


def test_pbft_committee_replaces_a_byzantine_primary_and_the_block_shows_the_view_change(tmp_path):
    from bcsfl_flower.consensus.quorum import QuorumCertificate as PbftCertificate, verify as verify_pbft

    g = global_model()
    honest, honest_keys, _ = chartered_strategy(tmp_path / "h", CLIENTS, g)
    byz, byz_keys, _ = chartered_strategy(tmp_path / "b", CLIENTS, g, byzantine_first=1)
    clean, _ = run_round(honest, g, 1, honest_replies(honest_keys, g, 1))
    attacked, _ = run_round(byz, g, 1, honest_replies(byz_keys, g, 1))
    assert model_hash(arrays_to_numpy(attacked)) == model_hash(arrays_to_numpy(clean))
    block = byz.ledger.latest()
    consensus = block.data["consensus"]
    assert consensus["protocol"] == "pbft" and consensus["view_changes"] >= 1 and consensus["commit_view"] >= 1
    committee = byz.ledger.state_at(block.sequence_no - 1).committee()
    pbft_cert = PbftCertificate.from_json(consensus["commit_certificate"])
    assert verify_pbft(pbft_cert, list(committee.values()))
    # The PBFT commits ordered the very statement the round certificate signs.
    from bcsfl_flower.consensus.messages import Request

    statement = Certificate.from_json(block.data["certificate"]).statement
    request = consensus["request"]
    assert request["value"] == statement.digest
    assert Request(request["client"], request["rid"], request["value"]).digest == pbft_cert.digest
    primary = block.data["committee"][0]
    assert [d["member"] for d in block.data["dissent"]] == [primary]
    assert honest.ledger.latest().data["consensus"]["view_changes"] == 0


def test_a_new_run_on_a_ledger_with_rounds_continues_their_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    g = global_model()
    first, keys, authority = chartered_strategy(tmp_path, CLIENTS[:5], g, ledger=url)
    arrays, _ = run_round(first, g, 1, honest_replies(keys, g, 1))
    first.ledger.close()
    g1 = arrays_to_numpy(arrays)
    # Flower counts rounds from 1 in every run; the chain's count goes on (a round must follow the last).
    again = BCSFL(ledger=url, key_dir=str(tmp_path / "keys"), enrolment_key=authority)
    assert run_round(again, g1, 1, honest_replies(keys, g1, 1))[0] is not None
    assert again.rounds[-1]["chain_round"] == 2 and again.ledger.state().round == 2


def test_server_momentum_moves_by_the_mean_update_plus_beta_times_the_last_certified_step(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, ledger=f"sqlite:///{tmp_path / 'l.db'}",
                                           filter_config=FilterConfig(server_momentum=0.5))
    models = [g]
    for r in (1, 2, 3):
        replies = honest_replies(keys, models[-1], r, rng_seed=r)
        new, _ = run_round(strategy, models[-1], r, replies)
        assert strategy.rounds[-1]["committed"] and sorted(strategy.rounds[-1]["accepted"]) == CLIENTS
        mean = {k: np.mean([arrays_to_numpy(m.content["arrays"])[k] - models[-1][k] for m in replies], axis=0)
                for k in g}
        for k in g:  # from round 3: round 2's previous model, x0, was never certified
            momentum = 0.5 * (models[-1][k] - models[-2][k]) if r == 3 else 0.0
            np.testing.assert_allclose(arrays_to_numpy(new)[k], models[-1][k] + mean[k] + momentum, atol=1e-5)
        models.append(arrays_to_numpy(new))
    state = strategy.ledger.state()
    assert state.previous_model == model_hash(models[2]) and state.model == model_hash(models[3])
