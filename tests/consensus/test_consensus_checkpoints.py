"""Log truncation at stable checkpoints, application checkpoints and state transfer (4.3)."""

from __future__ import annotations

import dataclasses

import pytest
from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus import FetchState, PBFTConfig, Replica, Stabilised, StableCheckpoint
from bcsfl_flower.consensus.dedup import ClientTable
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.state import TimerKind

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
CFG = PBFTConfig(checkpoint_interval=4, log_window=8)


def _beat(pump: Pump, rounds: int = 3) -> None:
    """Heartbeats: every replica's status timer fires, ``rounds`` times."""
    for _ in range(rounds):
        for i in range(len(pump.nodes)):
            pump.fire(i, TimerKind.STATUS)
        pump.run()


def _run(pump: Pump, rids, at: int = 0) -> None:
    for rid in rids:
        pump.submit(at, request(rid))
        pump.run()


def test_truncation_keeps_the_log_and_the_at_most_once_record_bounded():
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    _run(pump, range(100))
    for i, r in enumerate(reps):
        assert len(pump.committed[i]) == 100 and r.h == 100
        assert r.execution.held() <= CFG.log_window and len(r.committed_log()) <= CFG.log_window
        assert all(seq > r.h for (_v, seq) in r.slots.keys())
        assert len(r.execution.clients) == 1  # one client: one record, whatever it sent
        assert r.requests.assigned() <= CFG.log_window and r.slots.bodies_held() <= CFG.log_window
        assert [c.seq for c in pump.stabilised[i]] == list(range(4, 101, 4))
    # A request re-sent after its entry was dropped still executes at most once.
    out = reps[0].submit(request(3))
    assert not any(type(o).__name__ == "Broadcast" for o in out)


def test_a_replica_cut_off_for_several_checkpoints_fetches_the_state_and_takes_part_again():
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    pump.down = {3}
    _run(pump, range(22))
    assert reps[0].h == 20 and reps[3].last_executed == 0
    pump.down = set()
    _beat(pump, 2)  # the peers' statuses, then its own: far behind, peers send the proof of 20
    assert pump.fetch[3] and pump.fetch[3][-1].seq == 20 and reps[3].last_executed == 0
    cp = pump.fetch[3][-1]
    assert cp.state_digest == reps[0].stable_checkpoint().state_digest and cp.clients
    # Until the driver installed the state nothing executes, even entries it could get.
    pump.fire(0, TimerKind.STATUS)
    pump.run()
    assert reps[3].last_executed == 0
    with pytest.raises(ValueError):
        reps[3].state_transferred(dataclasses.replace(cp, state_digest="0" * 64))
    pump.feed(3, reps[3].state_transferred(cp))
    pump.run()
    _beat(pump, 4)
    assert reps[3].last_executed == 22 and reps[3].state_digest == reps[0].state_digest
    pump.down = {1}  # now the quorum needs replica 3
    _run(pump, range(22, 30))
    assert reps[3].last_executed == reps[0].last_executed == 30
    assert reps[3].state_digest == reps[0].state_digest == reps[2].state_digest
    assert reps[3].submit(request(5)) == []  # the transferred record knows what ran before


def test_restart_from_a_persisted_stable_checkpoint():
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    _run(pump, range(10))
    persisted = pump.stabilised[2][-1].to_json()  # what the driver wrote at seq 8
    cp = StableCheckpoint.from_json(persisted)
    assert cp == reps[2].stable_checkpoint() and cp.seq == 8
    keys = keys_for(4)
    pubs = [k.public_hex for k in keys]
    with pytest.raises(ValueError):
        Replica(2, keys[2], pubs, client_keys=CLIENTS, config=CFG, initial=dataclasses.replace(cp, clients=()))
    fresh = Replica(2, keys[2], pubs, client_keys=CLIENTS, config=CFG, initial=cp)
    assert (fresh.h, fresh.last_executed, fresh.state_digest) == (8, 8, cp.state_digest)
    reps[2] = pump.nodes[2] = fresh
    pump.committed[2] = []
    pump.feed(2, fresh.start())
    _beat(pump, 5)  # a replica a little behind gets catch-up once it stalls (catchup_patience)
    assert fresh.last_executed == 10  # the entries above the checkpoint, from its peers
    pump.down = {0}  # the primary is gone: the restarted replica must help change views
    for rid in range(10, 14):
        for i in (1, 2, 3):
            pump.submit(i, request(rid))
    pump.run()
    for i in (1, 2, 3):
        pump.fire(i, TimerKind.REQUEST)
    pump.run()
    assert fresh.last_executed == reps[1].last_executed >= 14
    assert fresh.state_digest == reps[1].state_digest
    assert [c.seq for c in pump.committed[2]][0] == 9  # it executed from the checkpoint on


def _app_replicas(digests):
    """Replicas with application checkpoints; replica i's driver reports ``digests[i]``
    (None: an old replica without application checkpoints)."""
    reps = []
    keys = keys_for(4)
    for i, d in enumerate(digests):
        cfg = dataclasses.replace(CFG, app_checkpoints=d is not None)
        reps.append(Replica(i, keys[i], [k.public_hex for k in keys], client_keys=CLIENTS, config=cfg))
    pump = Pump(reps)
    for rid in range(5):
        pump.submit(0, request(rid))
        pump.run()
        for i, d in enumerate(digests):
            while pump.due[i]:
                pump.feed(i, reps[i].checkpoint_ready(pump.due[i].pop(0), d))
        pump.run()
    return reps, pump


def test_application_checkpoints_are_signed_once_the_driver_has_its_digest():
    reps, pump = _app_replicas(["app-4"] * 4)
    for i, r in enumerate(reps):
        assert r.h == 4 and r.stable_checkpoint().app_digest == "app-4"
        assert [c.app_digest for c in pump.stabilised[i]] == ["app-4"]
    with pytest.raises(ValueError):
        reps[0].checkpoint_ready(8, "x" * 513)


@pytest.mark.parametrize("digests", [["a", "a", "b", "b"], ["a", "a", None, None]])
def test_replicas_that_disagree_on_the_application_state_never_stabilise(digests):
    reps, pump = _app_replicas(digests)
    assert all(r.last_executed == 5 for r in reps)
    assert all(r.h == 0 for r in reps) and not any(pump.stabilised)


def test_fetch_state_is_an_output_of_the_package():
    assert FetchState.__module__.endswith("outputs") and Stabilised.__module__.endswith("outputs")


def test_the_at_most_once_record_is_bounded_per_client_and_in_clients():
    table = ClientTable(window=4, max_clients=2)
    table.record(("a", 2), 1)  # rids 0 and 1 of a new client may still be in flight
    assert table.executed(("a", 2)) and not table.executed(("a", 1)) and not table.executed(("a", 3))
    table.record(("a", 10**12), 2)  # a huge jump keeps only the window below it as gaps
    assert table.snapshot() == (("a", 10**12, tuple(range(10**12 - 3, 10**12)), 2),)
    assert table.executed(("a", 1)) and not table.executed(("a", 10**12 - 1))  # too old / a gap
    table.record(("a", 10**12 - 1), 3)
    assert table.executed(("a", 10**12 - 1))
    table.record(("b", 0), 4)
    table.record(("c", 0), 5)  # a third client: the least recently executed one goes
    assert len(table) == 2 and not table.executed(("a", 10**12))
    assert ClientTable(4, 2, table.snapshot()).snapshot() == table.snapshot()
