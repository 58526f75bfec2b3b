"""Every message has a size bound: view changes carry requests by digest, bodies are
fetched, catch-up is split by bytes, and the wire refuses oversize frames per type."""

from __future__ import annotations

import dataclasses

import pytest
from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.limits import message_bounds
from bcsfl_flower.consensus.messages import (
    CatchUp, Commit, NewView, Prepare, PrePrepare, RequestBody, RequestFetch, Send, StateProof, Status,
    ViewChange, sign,
)
from bcsfl_flower.consensus.outbox import Outbox
from bcsfl_flower.consensus.replica import PBFTConfig
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.state import TimerKind
from bcsfl_flower.ledger.wire import MAX_FRAME, MESSAGE_BOUNDS, WireError, decode_message, encode_message

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
MIB = 1024 * 1024


def _sent(pump: Pump, cls) -> list:
    return [m for _src, m in pump.sent if isinstance(m, cls)]


def test_new_view_after_a_window_of_large_prepared_requests_is_small_and_commits_them():
    cfg = PBFTConfig(checkpoint_interval=4, log_window=8, max_request_bytes=2 * MIB)
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    pump = Pump(reps)
    # Everything prepares but nothing commits, and replica 3 never sees a request body.
    pump.drop = lambda src, dst, msg: isinstance(msg, Commit) or (isinstance(msg, PrePrepare) and dst == 3)
    big = [request(rid, f"{rid}-" + "m" * MIB) for rid in range(cfg.log_window)]
    for req in big:
        pump.submit(0, req)
    pump.run()
    assert all(r.last_executed == 0 for r in reps) and len(reps[1].slots.prepared_above(0)) == 8
    pump.drop = lambda src, dst, msg: False
    pump.down = {0}
    assert pump.fire(1, TimerKind.REQUEST) and pump.fire(2, TimerKind.REQUEST)
    pump.run()
    assert pump.views[1:] == [1, 1, 1]
    (nv,) = _sent(pump, NewView)
    size = len(encode_message(nv))
    assert size <= message_bounds(cfg, 4)["new-view"] and size < 64 * 1024  # 8 MiB prepared
    assert decode_message(encode_message(nv), message_bounds(cfg, 4)) == nv
    assert all(pp.request is None for pp in nv.pre_prepares)
    assert all(c.pre_prepare.request is None for vc in nv.view_changes for c in vc.prepared)
    # Replica 3 fetched the bodies by digest and executed them like the others.
    assert {f.digest for f in _sent(pump, RequestFetch) if f.sender == 3} == {r.digest for r in big}
    for i in (1, 2, 3):
        assert [c.request for c in pump.committed[i]] == big
    assert reps[3].state_digest == reps[1].state_digest
    assert all(r.outbox.oversize == 0 for r in reps)


def test_a_fetched_body_counts_only_when_its_digest_matches():
    reps = make_replicas(4, client_keys=CLIENTS)
    keys = keys_for(4)
    pump = Pump(reps)
    pump.drop = lambda src, dst, msg: isinstance(msg, Commit)
    pump.submit(0, request(1))
    pump.run()
    body = reps[1].slots.body(request(1).digest)
    fetch = sign(RequestFetch(request(1).digest, 1, 3), keys[3])
    (answer,) = [o.msg for o in reps[1].receive(fetch) if isinstance(o, Send)]
    assert isinstance(answer, RequestBody) and answer.request == body
    assert reps[1].receive(fetch) == []  # asked again before its next heartbeat: no second copy
    # Nobody asked replica 2 for anything: an unsolicited body changes nothing.
    assert reps[2].receive(sign(RequestBody(request(7), 0), keys[0])) == []
    assert reps[2].receive(sign(RequestFetch("0" * 64, 1, 0), keys[0])) == []  # unknown digest


def test_catch_up_is_split_by_bytes():
    cfg = PBFTConfig(checkpoint_interval=16, log_window=32, catchup_bytes=12_000)
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    keys = keys_for(4)
    pump = Pump(reps)
    pump.down = {3}
    for rid in range(10):
        pump.submit(0, request(rid, f"{rid}-" + "x" * 4000))
        pump.run()
    out = reps[0].receive(sign(Status(0, True, 0, 0, 3), keys[3]))
    (catch_up,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, CatchUp)]
    sizes = [len(e.encoded()) for e in catch_up.entries]
    assert 1 < len(sizes) < 10 and sum(sizes) <= cfg.catchup_bytes
    # One entry always goes, even over the byte budget (a request is bounded on its own).
    tight = dataclasses.replace(cfg, catchup_bytes=100)
    reps = make_replicas(4, client_keys=CLIENTS, config=tight)
    pump = Pump(reps)
    for rid in range(6):  # more than catchup_lag ahead of the status below: sent at once
        pump.submit(0, request(rid, "y" * 4000))
        pump.run()
    out = reps[0].receive(sign(Status(0, True, 0, 0, 3), keys[3]))
    (catch_up,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, CatchUp)]
    assert [e.seq for e in catch_up.entries] == [1]


def test_oversize_messages_are_refused_by_the_decoder_and_never_sent():
    cfg = PBFTConfig(max_request_bytes=4096)
    bounds = message_bounds(cfg, 4)
    keys = keys_for(4)
    small, large = request(1, "s" * 100), request(2, "L" * 5000)
    ok = sign(PrePrepare(0, 1, small.digest, small, 0), keys[0])
    assert decode_message(encode_message(ok), bounds) == ok
    heavy = sign(PrePrepare(0, 2, large.digest, large, 0), keys[0])
    with pytest.raises(WireError, match="pre-prepare message of .* exceeds its bound"):
        decode_message(encode_message(heavy), bounds)
    fat_prepare = sign(Prepare(0, 1, "d" * 4000, 1), keys[1])  # default bounds: per type
    with pytest.raises(WireError, match="prepare message"):
        decode_message(encode_message(fat_prepare))
    assert max(MESSAGE_BOUNDS.values()) < MAX_FRAME // 2
    # The replica refuses an oversize request, so as primary it never proposes one ...
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    big = Request_of(5000)
    assert reps[0].submit(big) == [] and not reps[0].requests
    # ... and its outbox drops anything over its bound instead of sending it.
    outbox = Outbox(keys[0], 0)
    outbox.bounds = {"prepare": 10}
    outbox.broadcast(sign(Prepare(0, 1, "d" * 64, 0), keys[0]))
    assert outbox.flush() == [] and outbox.oversize == 1


def Request_of(size: int):  # noqa: N802 - a request of about ``size`` bytes
    return request(99, "z" * size)


def test_new_message_types_round_trip_on_the_wire():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    for rid in range(5):
        pump.submit(0, request(rid))
        pump.run()
    keys = keys_for(4)
    cp = reps[0].stable_checkpoint()
    proof = sign(StateProof(cp.seq, cp.state_digest, cp.app_digest, cp.clients, cp.proof, 0), keys[0])
    vc = sign(ViewChange(1, cp.seq, cp.state_digest, cp.proof, (), 1), keys[1])
    for msg in (proof, vc, sign(RequestFetch("a" * 64, 3, 2), keys[2]), sign(RequestBody(request(1), 1), keys[1])):
        back = decode_message(encode_message(msg))
        assert back == msg and back.encoded() == msg.encoded()


def test_a_16_mib_model_upload_fits_a_request_and_its_pre_prepare_decodes():
    model = "A" * (16 * MIB * 4 // 3 + 4)  # 16 MiB base64-encoded
    req = request(1, '{"op": "upload", "model": "' + model + '"}')
    cfg = PBFTConfig()
    assert len(req.encoded()) <= cfg.max_request_bytes
    pp = sign(PrePrepare(0, 1, req.digest, req, 0), keys_for(4)[0])
    data = encode_message(pp)
    assert len(data) <= MESSAGE_BOUNDS["pre-prepare"] < MAX_FRAME
    assert decode_message(data).request.digest == req.digest
