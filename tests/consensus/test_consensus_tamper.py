"""Evidence only from what a replica signed: a pre-prepare copy whose carried request was
altered in transit is dropped, never held against the primary that signed the digest."""

from __future__ import annotations

import dataclasses
import random

import pytest
from consensus_testkit import CLIENT_KEYS, make_replicas, request

from bcsfl_flower.consensus.byzantine import ByzantineReplica
from bcsfl_flower.consensus.messages import Prepare, PrePrepare, Request, ViewChange, sign
from bcsfl_flower.consensus.replica import PBFTConfig, Replica
from bcsfl_flower.consensus.scenario import draw_scenario, keys_for, run_scenario, valid_value
from bcsfl_flower.consensus.simnet import FaultSchedule, SimNetwork
from bcsfl_flower.consensus.state import ReplicaStatus
from bcsfl_flower.consensus.viewchange import digest_ok
from bcsfl_flower.crypto import SigningKey, sha256_hex

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
BYZ_CLIENT = SigningKey.from_seed(b"test-byz-client")
CFG = PBFTConfig(checkpoint_interval=4, log_window=8, request_timeout=40.0, status_interval=10.0)


def _tampered(pp: PrePrepare, req: Request | None) -> PrePrepare:
    copy = dataclasses.replace(pp, request=req)
    object.__setattr__(copy, "sig", pp.sig)  # the primary's signature, still valid
    return copy


def _alterations(req: Request) -> dict[str, Request | None]:
    return {
        "value": Request(req.client, req.rid, req.value + "-tampered", req.sig),
        "client-sig": Request(req.client, req.rid, req.value, bytes(64)),
        "unsigned": Request(req.client, req.rid, req.value, b""),
        "stripped": None,
        "swapped": request(99, client=1),
        "invalid": Request.make(req.client, req.rid, "INVALID-x", CLIENT_KEYS[0]),
    }


def _msgs(outputs):
    return [o.msg for o in outputs if hasattr(o, "msg")]


def test_request_digest_covers_the_client_signature_and_keeps_unsigned_digests():
    unsigned = Request.make("c", 1, "v")
    assert unsigned.digest == sha256_hex(unsigned.body())  # ledger / committee digests unchanged
    signed = request(1)
    assert signed.digest != sha256_hex(signed.body())
    forged = Request(signed.client, signed.rid, signed.value, bytes(64))
    assert forged.body() == signed.body() and forged.digest != signed.digest
    assert Request(signed.client, signed.rid, signed.value, b"").digest != signed.digest


@pytest.mark.parametrize("kind", ["value", "client-sig", "unsigned", "stripped", "swapped", "invalid"])
def test_tampered_copy_is_dropped_without_a_view_change(kind):
    reps = make_replicas(4, validate=valid_value, client_keys=CLIENTS)
    req = request(1)
    pp = sign(PrePrepare(0, 1, req.digest, req, 0), keys_for(4)[0])
    backup = reps[2]
    copy = _tampered(pp, _alterations(req)[kind])
    assert not digest_ok(copy)
    out = _msgs(backup.receive(copy))
    assert not any(isinstance(m, (Prepare, ViewChange)) for m in out)
    assert backup.status is ReplicaStatus.NORMAL and backup.view == 0
    # The primary's own copy still gets prepared afterwards.
    out = _msgs(backup.receive(pp))
    assert any(isinstance(m, Prepare) and m.digest == req.digest for m in out)
    assert backup.status is ReplicaStatus.NORMAL and backup.view == 0


def test_primary_that_signs_a_badly_client_signed_request_is_still_suspected():
    reps = make_replicas(4, validate=valid_value, client_keys=CLIENTS)
    req = request(1)
    bad = Request(req.client, req.rid, req.value, bytes(64))
    pp = sign(PrePrepare(0, 1, bad.digest, bad, 0), keys_for(4)[0])  # the digest covers the bad signature
    out = _msgs(reps[2].receive(pp))
    assert not any(isinstance(m, Prepare) for m in out)
    assert any(isinstance(m, ViewChange) and m.view == 1 for m in out)


def test_tampered_copy_of_a_future_view_does_not_displace_the_genuine_one():
    reps = make_replicas(4, validate=valid_value, client_keys=CLIENTS)
    req = request(1)
    pp = sign(PrePrepare(1, 1, req.digest, req, 1), keys_for(4)[1])  # view 1, not entered yet
    backup = reps[2]
    backup.receive(_tampered(pp, _alterations(req)["value"]))
    backup.receive(pp)
    assert backup.slots.take_buffered((1, 1)) is pp


class _SuspectsCarriedRequest(Replica):
    """The old rule: a carried request that does not match starts a view change."""

    def _on_pre_prepare(self, pp):
        v = pp.view
        if pp.sender != v % self.n or pp.sender == self.index or v < self.view or digest_ok(pp):
            return super()._on_pre_prepare(pp)
        if v > self.view or self.status is not ReplicaStatus.NORMAL:
            self.slots.buffer(pp)  # checked only when replayed (first copy wins)
        elif self.slots.slot(v, pp.seq).pp is None:
            self._start_view_change(self.view + 1)


def _simulate(n, byzantine, reqs, cls=Replica, seed=0, until=8_000.0):
    keys = keys_for(n)
    pubs = [k.public_hex for k in keys]
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        rep = cls(i, keys[i], pubs, validate=valid_value, client_keys=CLIENTS, config=CFG)
        nodes.append(ByzantineReplica(rep, byzantine[i], rng, BYZ_CLIENT, "byz") if i in byzantine else rep)
    net = SimNetwork(nodes, FaultSchedule.reliable(seed=seed))
    for t, r in enumerate(reqs):
        net.submit_at(10.0 * t, r)
    correct = [i for i in range(n) if i not in byzantine]
    ok = net.run(until, stop=lambda: all(i in net.executed_by.get(r.key, {}) for r in reqs for i in correct))
    return net, correct, ok


@pytest.mark.parametrize("n,byz", [(4, {1: ("tamper-relay",)}), (7, {1: ("tamper-relay",), 4: ("tamper-relay",)})])
def test_relayed_tampering_does_not_depose_a_correct_primary(n, byz):
    reqs = [request(i, client=i % 2) for i in range(6)]
    net, correct, ok = _simulate(n, byz, reqs)
    assert ok and net.rushing == frozenset(byz)  # copies raced the primary's own (rushing)
    assert all(net.views[i] == 0 for i in correct)  # primary 0 never deposed
    logs = [[(c.seq, c.digest) for c in net.committed[i]] for i in correct]
    assert all(log == logs[0] for log in logs) and len(logs[0]) == len(reqs)
    assert not any("tampered" in c.request.value for c in net.committed[correct[0]])


def test_relayed_tampering_with_a_silent_byzantine_primary_commits_in_the_next_view():
    reqs = [request(i) for i in range(4)]
    net, correct, ok = _simulate(4, {0: ("tamper-relay",)}, reqs)
    assert ok and all(net.views[i] == 1 for i in correct)


def test_old_rule_is_stalled_by_relayed_tampering():
    """The scenario above is a real test: suspecting the carried request stops all commits."""
    net, correct, ok = _simulate(4, {1: ("tamper-relay",)}, [request(1)], cls=_SuspectsCarriedRequest)
    assert not ok and max(net.views) > 4


def test_fuzzer_draws_relayed_tampering_and_it_stays_live():
    seeds = [s for s in range(200) if any("tamper-relay" in b for b in draw_scenario(s, 4).byzantine.values())]
    assert len(seeds) >= 10
    for s in seeds[:10]:
        out = run_scenario(draw_scenario(s, 4))
        assert not out.safety and not out.liveness, (s, out.safety, out.liveness)
