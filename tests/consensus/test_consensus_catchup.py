"""Catch-up only for peers that need it, and pre-prepares signed over the digest alone."""

from __future__ import annotations

import dataclasses

from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.messages import CatchUp, PrePrepare, Send, StateProof, Status, sign
from bcsfl_flower.consensus.replica import PBFTConfig
from bcsfl_flower.consensus.scenario import keys_for

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
CFG = PBFTConfig(checkpoint_interval=4, log_window=16, catchup_lag=2, catchup_patience=2)


def _leader_with_commits(count: int):
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    for i in range(count):
        pump.submit(0, request(i))
    pump.run()
    assert len(pump.committed[0]) == count
    return reps, keys_for(4)


def _catch_ups(outputs) -> list[CatchUp]:
    return [o.msg for o in outputs if isinstance(o, Send) and isinstance(o.msg, CatchUp)]


def test_a_peer_slightly_behind_and_moving_gets_no_catch_up():
    reps, keys = _leader_with_commits(6)
    status = lambda executed: sign(Status(0, True, executed, 0, 3, b""), keys[3])  # noqa: E731
    assert _catch_ups(reps[0].receive(status(4))) == []  # first word from it: 2 behind, within the lag
    assert _catch_ups(reps[0].receive(status(5))) == []  # it moved on its own
    assert _catch_ups(reps[0].receive(status(5))) == []  # no progress once: it may be busy
    sent = _catch_ups(reps[0].receive(status(5)))  # twice in a row: it is stuck
    assert len(sent) == 1 and [e.seq for e in sent[0].entries] == [6]


def test_a_peer_far_behind_gets_catch_up_at_once():
    reps, keys = _leader_with_commits(6)
    out = reps[0].receive(sign(Status(0, True, 1, 0, 3, b""), keys[3]))
    # Checkpoint 4 is stable: the log up to it is gone, the peer gets its proof (to fetch
    # the state there) and no entries yet: it could run none of them before that.
    assert _catch_ups(out) == []
    (proof,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, StateProof)]
    assert proof.seq == 4 and proof.state_digest == reps[0].stable_checkpoint().state_digest
    after = sign(Status(0, True, 4, 4, 3, b""), keys[3])  # transferred; 2 behind: patience
    sent = [_catch_ups(reps[0].receive(after)) for _ in range(3)]
    assert sent[:2] == [[], []] and [e.seq for e in sent[2][0].entries] == [5, 6]


def test_pre_prepare_signature_binds_the_request_through_its_digest():
    reps, keys = _leader_with_commits(1)
    req, other = request(10), request(11)
    pp = sign(PrePrepare(0, 2, req.digest, req, 0, b""), keys[0])
    assert req.value.encode() not in pp.body()  # the batch is not hashed again by Ed25519
    assert req.value.encode() in pp.encoded()  # but it travels
    swapped = dataclasses.replace(pp, request=other)  # same signature, another request
    out = reps[1].receive(swapped)
    assert not any(type(o.msg).__name__ == "Prepare" for o in out if hasattr(o, "msg"))
    out = reps[2].receive(pp)
    assert any(type(o.msg).__name__ == "Prepare" for o in out if hasattr(o, "msg"))


def test_catch_up_in_flight_is_not_sent_again_until_the_peer_stalls():
    """A lagging peer reports every heartbeat; what it was handed is not re-sent each time
    (the soak's lagging node got the same window from every peer ten times a second,
    which kept both ends busy and the cluster stalled). Only entries above what is in
    flight, within ``catchup_batch`` of where it stands, go out; the window is sent again
    from where it stands after ``catchup_resend`` statuses in a row without progress."""
    cfg = PBFTConfig(checkpoint_interval=16, log_window=32, catchup_batch=4, catchup_lag=1, catchup_resend=3)
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    keys = keys_for(4)
    pump = Pump(reps)
    pump.down = {3}
    for rid in range(10):
        pump.submit(0, request(rid))
    pump.run()
    assert reps[0].last_executed == 10
    status = lambda executed: sign(Status(0, True, executed, 0, 3, b""), keys[3])  # noqa: E731
    seqs = lambda out: [e.seq for c in _catch_ups(out) for e in c.entries]  # noqa: E731
    assert seqs(reps[0].receive(status(2))) == [3, 4, 5, 6]  # far behind: at once
    assert seqs(reps[0].receive(status(2))) == []  # in flight: not again
    assert seqs(reps[0].receive(status(4))) == [7, 8]  # it ran two: the window slides by two
    assert seqs(reps[0].receive(status(8))) == [9, 10]
    assert [seqs(reps[0].receive(status(8))) for _ in range(3)] == [[], [], [9, 10]]  # lost? again
    assert seqs(reps[0].receive(status(1))) == [2, 3, 4, 5]  # it went back (restarted): from there


def test_checkpoint_proof_is_sent_once_per_checkpoint_until_the_peer_stalls():
    cfg = dataclasses.replace(CFG, catchup_resend=3)
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    pump = Pump(reps)
    for i in range(6):
        pump.submit(0, request(i))
    pump.run()
    keys = keys_for(4)
    proofs = lambda out: [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, StateProof)]  # noqa: E731
    behind = sign(Status(0, True, 1, 0, 3, b""), keys[3])
    assert [len(proofs(reps[0].receive(behind))) for _ in range(5)] == [1, 0, 0, 1, 0]
