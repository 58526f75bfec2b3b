"""Normal case, determinism, de-duplication, checkpoints, signatures, certificates."""

from __future__ import annotations

import dataclasses

from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.messages import (
    NULL_DIGEST, Checkpoint, Commit, Committed, CommittedEntry, Prepare, PrePrepare, ViewChange, sign,
)
from bcsfl_flower.consensus.quorum import QuorumCertificate, entry_matches, quorum_size, verify
from bcsfl_flower.consensus.scenario import draw_scenario, keys_for, run_scenario
from bcsfl_flower.consensus.state import ReplicaStatus, TimerKind
from bcsfl_flower.consensus.viewchange import valid_checkpoint_proof
from bcsfl_flower.crypto import SigningKey

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}


def test_normal_case_commits_in_order_with_certificates():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    reqs = [request(i) for i in range(6)]
    for r in reqs:
        pump.submit(0, r)  # the primary of view 0
    pump.run()
    pubs = list(reps[0].keys)
    for i in range(4):
        log = pump.committed[i]
        assert [c.seq for c in log] == list(range(1, 7))
        assert [c.request for c in log] == reqs
        assert not any(c.noop for c in log)
        for c in log:
            assert entry_matches(c.certificate, c.seq, c.request)
            assert verify(c.certificate, pubs, c.request)
        assert reps[i].committed_log() == log[reps[i].h:]  # the log below the checkpoint is gone
    assert len({reps[i].state_digest for i in range(4)}) == 1
    # Requests sent to a backup are forwarded to the primary.
    pump.submit(2, request(10))
    pump.run()
    assert all(pump.committed[i][-1].request == request(10) for i in range(4))


def test_same_seed_same_trace():
    seed = next(s for s in range(100) if draw_scenario(s, 4).byzantine and draw_scenario(s, 4).schedule.loss)
    a = run_scenario(draw_scenario(seed, 4), keep_net=True)
    b = run_scenario(draw_scenario(seed, 4), keep_net=True)
    assert a.trace_digest == b.trace_digest
    assert [[c.digest for c in log] for log in a.net.committed] == [
        [c.digest for c in log] for log in b.net.committed
    ]
    c = run_scenario(draw_scenario(seed + 1, 4))
    assert c.trace_digest != a.trace_digest


def test_request_deduplication():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    req = request(1)
    for _ in range(3):
        for i in range(4):
            pump.submit(i, req)  # client retransmits to everyone
    pump.run()
    for i in range(4):
        pump.submit(i, req)  # ... even after it executed
    pump.run()
    for i in range(4):
        assert [c.request for c in pump.committed[i]] == [req]
    # A primary that orders a request already in progress at another sequence number in
    # the same view is suspected: the backup refuses and starts a view change.
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    pump.down = {1, 2, 3}
    pump.submit(0, req)
    first = next(m for _, m in pump.sent if isinstance(m, PrePrepare))
    dup = sign(PrePrepare(0, 2, req.digest, req, 0), keys_for(4)[0])
    backup = reps[1]
    backup.receive(first)
    out = backup.receive(dup)
    assert backup.status is ReplicaStatus.VIEW_CHANGE and backup.view == 1
    assert any(isinstance(getattr(o, "msg", None), ViewChange) for o in out)


def test_checkpoints_truncate_log_and_bound_the_window():
    reps = make_replicas(4, client_keys=CLIENTS)  # K = 4, L = 8
    pump = Pump(reps)
    pump.drop = lambda src, dst, msg: isinstance(msg, Checkpoint)
    for i in range(12):
        pump.submit(0, request(i))
    pump.run()
    # No checkpoint became stable, so the primary stops at the high water mark h + L.
    assert all(len(pump.committed[i]) == 8 for i in range(4))
    assert reps[0].h == 0 and reps[0].high_water_mark == 8
    # Checkpoint messages get through again (heartbeat retransmission): window slides.
    pump.drop = lambda src, dst, msg: False
    for i in range(4):
        pump.fire(i, TimerKind.STATUS)
    pump.run()
    assert all(len(pump.committed[i]) == 12 for i in range(4))
    for r in reps:
        assert r.h == 12
        assert all(seq > r.h for (_v, seq) in r.slots.keys())
        assert all(seq > r.h for seq in r.slots.prepared_seqs())
        cp = r.stable_checkpoint()
        assert cp.seq == 12 and len(cp.proof) == quorum_size(4)
        assert valid_checkpoint_proof(cp.seq, cp.state_digest, cp.proof, r.keys)
        assert cp.state_digest == reps[0].state_digest


def test_forged_outsider_and_tampered_messages_are_dropped():
    reps = make_replicas(4, client_keys=CLIENTS)
    keys = keys_for(4)
    r = reps[3]
    pp = sign(PrePrepare(0, 1, request(1).digest, request(1), 0), keys[0])
    assert r.receive(pp)  # genuine: the replica prepares
    assert r.slots.get(0, 1).pp == pp
    # Replica 1 forges a prepare in the name of replica 2.
    forged = Prepare(0, 1, pp.digest, 2, keys[1].sign(Prepare(0, 1, pp.digest, 2).body()))
    assert r.receive(forged) == []
    assert 2 not in r.slots.get(0, 1).prepares
    # An outsider (a key not in the replica set) claims an index outside the set, or a
    # member's index with its own key.
    outsider = SigningKey.from_seed(b"outsider")
    assert r.receive(sign(Prepare(0, 1, pp.digest, 7), outsider)) == []
    assert r.receive(sign(Prepare(0, 1, pp.digest, 1), outsider)) == []
    # A genuine message altered after signing.
    genuine = sign(Commit(0, 1, pp.digest, 1), keys[1])
    assert r.receive(dataclasses.replace(genuine, digest=NULL_DIGEST)) == []
    assert r.receive(dataclasses.replace(genuine, sig=bytes(64))) == []
    assert 1 not in r.slots.get(0, 1).prepares and not r.slots.get(0, 1).commits
    # Client requests with a bad client signature are not ordered either.
    bad = dataclasses.replace(request(2), value="changed")
    assert reps[0].submit(bad) == []


def test_quorum_certificate_verifies_and_tampering_fails():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    pump.submit(0, request(1))
    pump.run()
    entry = pump.committed[2][0]
    cert = entry.certificate
    pubs = list(reps[0].keys)
    assert verify(cert, pubs) and verify(cert, pubs, entry.request)
    assert len(set(cert.signers)) == quorum_size(4)
    assert not verify(cert, pubs, request(2))  # another request's digest
    assert not verify(dataclasses.replace(cert, digest="00" * 32), pubs)
    assert not verify(dataclasses.replace(cert, seq=2), pubs)
    assert not verify(dataclasses.replace(cert, commits=cert.commits[:-1]), pubs)  # 2f only
    padded = cert.commits[:-1] + (cert.commits[0],)  # a signer counted twice
    assert not verify(dataclasses.replace(cert, commits=padded), pubs)
    c0 = cert.commits[0]
    assert not verify(dataclasses.replace(cert, commits=(dataclasses.replace(c0, sig=bytes(64)),) + cert.commits[1:]), pubs)
    other_set = [k.public_hex for k in keys_for(4, "other")]
    assert not verify(cert, other_set)
    assert verify(QuorumCertificate.from_json(cert.to_json()), pubs, entry.request)


def test_state_transfer_install():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    pump.down = {3}  # replica 3 misses everything
    for i in range(3):  # below the first checkpoint: the others still hold the log
        pump.submit(0, request(i))
    pump.run()
    assert pump.committed[3] == [] and len(pump.committed[0]) == 3
    entries = reps[0].committed_entries()
    # Tampered entries (wrong request for a certificate, cut certificate) are refused.
    bad_req = CommittedEntry(1, request(99), entries[0].certificate)
    cut = dataclasses.replace(entries[0].certificate, commits=entries[0].certificate.commits[:1])
    assert reps[3].install([bad_req, CommittedEntry(1, entries[0].request, cut)]) == []
    out = reps[3].install(entries)
    assert [c.digest for c in out if isinstance(c, Committed)] == pump.digests(0)
    assert [(c.seq, c.digest, c.request) for c in reps[3].committed_log()] == [
        (c.seq, c.digest, c.request) for c in reps[0].committed_log()
    ]
    assert reps[3].state_digest == reps[0].state_digest
    assert reps[3].install(entries) == []  # idempotent
