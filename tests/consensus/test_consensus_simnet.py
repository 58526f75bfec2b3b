"""The simulated network: faults before GST, healing partitions, crash and restart."""

from __future__ import annotations

import dataclasses

from consensus_testkit import CLIENT_KEYS, make_replicas, request

from bcsfl_flower.consensus.agree import agree
from bcsfl_flower.consensus.replica import PBFTConfig
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.simnet import Crash, FaultSchedule, Partition, SimNetwork, app_digest

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
CFG = PBFTConfig(checkpoint_interval=4, log_window=8, request_timeout=40.0, status_interval=10.0)


def _run(schedule, reqs, until=20_000.0):
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    net = SimNetwork(reps, schedule)
    for t, r in reqs:
        net.submit_at(t, r)
    done = lambda: all(len(net.executed_by.get(r.key, {})) == 4 for _t, r in reqs)  # noqa: E731
    ok = net.run(until, stop=done)
    return net, reps, ok


def test_total_loss_before_gst_then_recovery():
    sched = FaultSchedule(seed=1, gst=300.0, loss=1.0)
    net, reps, ok = _run(sched, [(0.0, request(1)), (5.0, request(2))])
    assert ok and net.now >= 300.0  # nothing can commit before GST
    assert all(min(net.executed_by[request(i).key].values()) >= 300.0 for i in (1, 2))
    assert len({tuple(c.digest for c in log) for log in net.committed}) == 1


def test_duplication_and_reordering_are_harmless():
    sched = FaultSchedule(seed=2, gst=1e9, dup=1.0, delay=(1.0, 40.0))
    net, reps, ok = _run(sched, [(float(i), request(i)) for i in range(6)])
    assert ok and net.stats.duplicated > 0
    assert len({tuple(c.digest for c in log) for log in net.committed}) == 1
    assert all(len(log) == 6 for log in net.committed)


def test_partition_heals_and_isolated_primary_is_replaced():
    sched = FaultSchedule(seed=3, gst=400.0, partitions=(Partition(0.0, 400.0, frozenset({0})),))
    net, reps, ok = _run(sched, [(10.0, request(1))])
    assert ok
    # The majority side moved on without the primary and committed before the heal.
    assert max(net.executed_by[request(1).key][i] for i in (1, 2, 3)) < 400.0
    assert min(net.views[1:]) >= 1
    # The old primary learns the outcome after the heal.
    assert net.executed_by[request(1).key][0] >= 400.0


def test_crashed_replica_restarts_and_catches_up():
    sched = FaultSchedule(seed=4, gst=0.0, crashes=(Crash(2, 1.0, 500.0),))
    net, reps, ok = _run(sched, [(float(5 * i), request(i)) for i in range(10)])
    assert ok
    assert min(net.executed_by[request(9).key][i] for i in (0, 1, 3)) < 500.0
    assert net.executed_by[request(0).key][2] >= 500.0
    assert reps[2].committed_log()[-1].seq == 10 and reps[2].state_digest == reps[0].state_digest


def test_abstaining_member_still_commits_the_decision():
    keys = keys_for(4, "coordinator")
    res = agree(keys, [None, "aa" * 32, "aa" * 32, "aa" * 32], instance="round-9")
    assert res.ok and res.value == "aa" * 32 and res.view == 1 and res.committed_by == (0, 1, 2, 3)


def test_a_replica_down_for_many_checkpoints_comes_back_by_state_transfer():
    cfg = dataclasses.replace(CFG, app_checkpoints=True)
    reps = make_replicas(4, client_keys=CLIENTS, config=cfg)
    net = SimNetwork(reps, FaultSchedule(seed=5, gst=0.0, crashes=(Crash(2, 1.0, 800.0),)))
    reqs = [request(i) for i in range(30)]
    for i, r in enumerate(reqs):
        net.submit_at(10.0 * i, r)
    assert net.run(20_000.0, stop=lambda: all(len(net.executed_by.get(r.key, {})) == 4 for r in reqs))
    assert net.state_transfers >= 1 and reps[2].h >= 20  # peers dropped the log it missed
    assert [c.digest for c in net.committed[2]] == [c.digest for c in net.committed[0]]
    assert reps[2].stable_checkpoint().app_digest == app_digest(net.committed[0][: reps[2].h])
    assert all(r.execution.held() <= cfg.log_window for r in reps)
