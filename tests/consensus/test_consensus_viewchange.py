"""View change: silent, equivocating and invalid primaries, validate refusals, new-view O."""

from __future__ import annotations

import random

import pytest
from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.agree import agree
from bcsfl_flower.consensus.bugs import NewViewDropsPrepared
from bcsfl_flower.consensus.byzantine import ByzantineReplica
from bcsfl_flower.consensus.messages import (
    GENESIS_DIGEST, NULL_DIGEST, Commit, NewView, Prepare, PreparedCert, PrePrepare, Request,
    SetTimer, ViewChange, sign,
)
from bcsfl_flower.consensus.replica import PBFTConfig, Replica
from bcsfl_flower.consensus.scenario import keys_for, valid_value
from bcsfl_flower.consensus.simnet import FaultSchedule, SimNetwork
from bcsfl_flower.consensus.state import ReplicaStatus, TimerKind
from bcsfl_flower.consensus.viewchange import plan_new_view, valid_new_view, valid_view_change
from bcsfl_flower.crypto import SigningKey

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
BYZ_CLIENT = SigningKey.from_seed(b"test-byz-client")
CLIENTS_WITH_BYZ = {**CLIENTS, "byz": BYZ_CLIENT.public_hex}
CFG = PBFTConfig(checkpoint_interval=4, log_window=8, request_timeout=40.0, status_interval=10.0)


def simulate(n, byzantine, reqs, *, seed=0, schedule=None, until=20_000.0):
    """Run ``reqs`` through n replicas (``byzantine``: index -> behaviours)."""
    keys = keys_for(n)
    pubs = [k.public_hex for k in keys]
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        rep = Replica(i, keys[i], pubs, validate=valid_value, client_keys=CLIENTS_WITH_BYZ, config=CFG)
        if i in byzantine:
            rep = ByzantineReplica(rep, byzantine[i], rng, BYZ_CLIENT, "byz")
        nodes.append(rep)
    net = SimNetwork(nodes, schedule or FaultSchedule.reliable(seed=seed))
    for t, r in enumerate(reqs):
        net.submit_at(float(t), r)
    correct = [i for i in range(n) if i not in byzantine]

    def done():
        return all(i in net.executed_by.get(r.key, {}) for r in reqs for i in correct)

    assert net.run(until, stop=done), "requests not committed by every correct replica"
    logs = [[(c.seq, c.digest) for c in net.committed[i]] for i in correct]
    shortest = min(len(log) for log in logs)
    assert all(log[:shortest] == logs[0][:shortest] for log in logs)
    return net, correct


def test_silent_primary_is_replaced():
    net, correct = simulate(4, {0: ("silent",)}, [request(1), request(2)])
    assert min(net.views[i] for i in correct) >= 1
    for i in correct:
        assert [c.view for c in net.committed[i] if not c.noop] and all(
            c.view >= 1 for c in net.committed[i]
        )


@pytest.mark.parametrize("seed", range(4))
def test_equivocating_primary_honest_value_commits(seed):
    reqs = [request(1, client=seed % 2), request(2)]
    net, correct = simulate(4, {0: ("equivocate",)}, reqs, seed=seed)
    for i in correct:
        executed = {c.request.key for c in net.committed[i] if not c.noop}
        assert {r.key for r in reqs} <= executed


def test_invalid_proposals_trigger_view_change_and_honest_value_commits():
    reqs = [request(1), request(2), request(3)]
    net, correct = simulate(7, {0: ("bad-proposal",), 3: ("noise", "forge")}, reqs)
    assert min(net.views[i] for i in correct) >= 1
    for i in correct:
        values = [c.request.value for c in net.committed[i] if not c.noop]
        assert sorted(values) == sorted(r.value for r in reqs)
        assert not any("INVALID" in v or "tampered" in v for v in values)


def test_validate_refusal_starts_view_change_without_preparing():
    reps = make_replicas(4, validate=valid_value)
    bad = Request.make("client-0", 1, "INVALID-proposal")
    pp = sign(PrePrepare(0, 1, bad.digest, bad, 0), keys_for(4)[0])
    out = reps[2].receive(pp)
    msgs = [o.msg for o in out if hasattr(o, "msg")]
    assert not any(isinstance(m, Prepare) for m in msgs)
    assert any(isinstance(m, ViewChange) and m.view == 1 for m in msgs)
    assert reps[2].status is ReplicaStatus.VIEW_CHANGE


@pytest.mark.parametrize("byzantine", [{}, {0: ("equivocate",)}, {0: ("silent",)}])
def test_committee_refusal_leads_to_new_primary_and_honest_value(byzantine):
    keys = keys_for(4, "coordinator")
    honest, wrong = "ab" * 32, "cd" * 32
    # The primary (replica 0) proposes a candidate the others did not compute.
    res = agree(keys, [wrong, honest, honest, honest], instance="round-3", byzantine=byzantine)
    assert res.ok and res.value == honest
    assert res.view >= 1 and res.view % 4 != 0
    assert res.verify()
    assert set(res.committed_by) >= {1, 2, 3}


def test_committee_agreement_on_first_try_and_no_quorum():
    keys = keys_for(4, "coordinator")
    res = agree(keys, ["ee" * 32] * 4, instance="round-1")
    assert res.ok and res.view == 0 and res.seq == 1 and res.committed_by == (0, 1, 2, 3)
    split = agree(keys, ["a1" * 32, "a1" * 32, "b2" * 32, "c3" * 32], instance="round-2")
    assert not split.ok and split.value is None


def test_view_change_timeouts_back_off():
    delays = []
    keys = keys_for(7)
    pubs = [k.public_hex for k in keys]
    rng = random.Random(0)
    nodes = [Replica(i, keys[i], pubs, validate=valid_value, client_keys=CLIENTS, config=CFG) for i in range(7)]
    nodes[0] = ByzantineReplica(nodes[0], ("silent",), rng, BYZ_CLIENT, "byz")
    nodes[1] = ByzantineReplica(nodes[1], ("silent",), rng, BYZ_CLIENT, "byz")
    net = SimNetwork(nodes)
    net.on_output = lambda node, out, now: (
        delays.append(out.delay) if isinstance(out, SetTimer) and out.kind is TimerKind.VIEW_CHANGE else None
    )
    net.submit_at(0.0, request(1))
    assert net.run(5000, stop=lambda: all(i in net.executed_by.get(request(1).key, {}) for i in range(2, 7)))
    assert min(net.views[2:]) == 2  # views 0 and 1 have silent primaries
    assert 40.0 in delays and 80.0 in delays and max(delays) == 80.0


def _cert(keys, view, seq, req, backups):
    digest = req.digest if req else NULL_DIGEST
    primary = view % len(keys)
    pp = sign(PrePrepare(view, seq, digest, None, primary), keys[primary])  # by digest
    prepares = tuple(sign(Prepare(view, seq, digest, b), keys[b]) for b in backups)
    return PreparedCert(pp, prepares)


def test_new_view_o_set_keeps_highest_prepared_and_fills_gaps():
    keys = keys_for(4)
    pubs = [k.public_hex for k in keys]
    r0, r1, r3 = Request.make("c", 0, "old"), Request.make("c", 1, "new"), Request.make("c", 3, "x")
    old = _cert(keys, 0, 1, r0, (1, 2))  # seq 1 prepared in view 0 ...
    new = _cert(keys, 1, 1, r1, (0, 2))  # ... and (not committed) re-prepared in view 1
    third = _cert(keys, 1, 3, r3, (2, 3))
    vcs = [
        sign(ViewChange(2, 0, GENESIS_DIGEST, (), (old,), 0), keys[0]),
        sign(ViewChange(2, 0, GENESIS_DIGEST, (), (new, third), 2), keys[2]),
        sign(ViewChange(2, 0, GENESIS_DIGEST, (), (), 3), keys[3]),
    ]
    assert all(valid_view_change(vc, pubs, 8) for vc in vcs)
    plan = plan_new_view(vcs)
    assert plan.entries == ((1, r1.digest), (2, NULL_DIGEST), (3, r3.digest))
    pps = tuple(sign(PrePrepare(2, s, d, None, 2), keys[2]) for s, d in plan.entries)
    assert valid_new_view(sign(NewView(2, tuple(vcs), pps, 2), keys[2]), pubs, 8) == plan
    # Prepared requests travel by digest only: a certificate or O carrying a body is refused.
    heavy = PreparedCert(sign(PrePrepare(1, 3, r3.digest, r3, 1), keys[1]), third.prepares)
    assert not valid_view_change(sign(ViewChange(2, 0, GENESIS_DIGEST, (), (heavy,), 2), keys[2]), pubs, 8)
    bodied = pps[:2] + (sign(PrePrepare(2, 3, r3.digest, r3, 2), keys[2]),)
    assert valid_new_view(sign(NewView(2, tuple(vcs), bodied, 2), keys[2]), pubs, 8) is None
    # A new primary that drops a prepared request, or shows too few view-changes, is refused.
    dropped = (sign(PrePrepare(2, 1, NULL_DIGEST, None, 2), keys[2]),) + pps[1:]
    assert valid_new_view(sign(NewView(2, tuple(vcs), dropped, 2), keys[2]), pubs, 8) is None
    assert valid_new_view(sign(NewView(2, tuple(vcs[:2]), pps, 2), keys[2]), pubs, 8) is None
    # A view-change with a certificate short of 2f prepares is invalid.
    weak = _cert(keys, 0, 1, r0, (1,))
    assert not valid_view_change(sign(ViewChange(2, 0, GENESIS_DIGEST, (), (weak,), 1), keys[1]), pubs, 8)


@pytest.mark.parametrize("cls, safe", [(Replica, True), (NewViewDropsPrepared, False)])
def test_value_committed_at_one_replica_survives_the_view_change(cls, safe):
    reps = make_replicas(4, cls, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    # Only replica 1 sees the commits: it executes seq 1, the others only prepared it.
    pump.drop = lambda src, dst, msg: isinstance(msg, Commit) and dst != 1
    pump.submit(0, request(1))
    pump.run()
    assert [c.seq for c in pump.committed[1]] == [1] and not pump.committed[2]
    pump.drop = lambda src, dst, msg: False
    pump.down = {0}  # the old primary goes quiet; 2 and 3 time out
    assert pump.fire(2, TimerKind.REQUEST) and pump.fire(3, TimerKind.REQUEST)
    pump.run()
    assert pump.views[1:] == [1, 1, 1]
    same = pump.digests(2)[:1] == pump.digests(1) == pump.digests(3)[:1]
    assert same is safe
