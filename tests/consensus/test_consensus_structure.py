"""The replica is one dispatcher over state objects; status and timer kinds are enums."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus import replica as replica_module
from bcsfl_flower.consensus.checkpoint import CheckpointLog, Heartbeat
from bcsfl_flower.consensus.dedup import table_digest
from bcsfl_flower.consensus.messages import Broadcast, Checkpoint, SetTimer, StateProof, Status, sign
from bcsfl_flower.consensus.outbox import Outbox
from bcsfl_flower.consensus.replica import NORMAL, PBFTConfig, Replica
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.state import ReplicaStatus, TimerKind

PACKAGE = Path(replica_module.__file__).parent
CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
# The replica's parts: none of them may reach back into the replica.
PARTS = ("bodies", "checkpoint", "dedup", "execution", "limits", "messages", "outbox", "outputs", "quorum",
         "requests", "slots", "state", "transfer", "viewchange")


def _imported_modules(name: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_parts_do_not_import_the_replica_and_there_are_no_mixins():
    for name in PARTS:
        imported = _imported_modules(name)
        assert not any(m.endswith("replica") for m in imported), (name, imported)
    assert Replica.__mro__ == (Replica, object)
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) < 400, path.name


def test_status_and_timer_kinds_are_enums_that_read_as_their_strings():
    reps = make_replicas(4, client_keys=CLIENTS)
    kinds = [o.kind for o in reps[1].start() if isinstance(o, SetTimer)]
    assert kinds == [TimerKind.STATUS] and all(type(k) is TimerKind for k in kinds)
    assert reps[1].status is ReplicaStatus.NORMAL is NORMAL
    # Drivers key timers by kind and report the status as JSON: both read as strings.
    assert reps[1].status == "normal" and f"{reps[1].status}" == "normal"
    assert json.dumps({"pbft_status": reps[1].status}) == '{"pbft_status": "normal"}'
    assert {TimerKind.VIEW_CHANGE: 1}["view-change"] == 1
    out = reps[1].submit(request(1))  # a backup waits for the request: its timer runs
    assert [o.kind for o in out if isinstance(o, SetTimer)] == [TimerKind.REQUEST]


def test_checkpoint_log_moves_the_water_marks_on_a_quorum():
    keys = keys_for(4)
    outbox = Outbox(keys[3], 3)
    log = CheckpointLog(outbox, 3, interval=4, log_window=8, quorum=3)
    assert (log.low, log.high) == (0, 8) and log.in_window(8) and not log.in_window(9)
    table = (("client-0", 3, (), 4),)
    votes = [sign(Checkpoint(4, "d" * 64, "", table_digest(table), i), keys[i]) for i in range(3)]
    assert log.accepts(votes[0]) and not log.accepts(sign(Checkpoint(5, "d" * 64, "", "", 0), keys[0]))
    assert not log.add(votes[0]) and not log.add(votes[1]) and log.add(votes[2])
    assert (log.low, log.high) == (4, 12) and log.stable.proof == tuple(votes)
    assert not log.complete  # stable by votes: the at-most-once table there is not known here
    assert not log.advance(4, "e" * 64, ())  # not above h
    assert outbox.flush() == []  # counting votes sends nothing
    log.executed(8, "f" * 64, table)
    assert not log.take(8, "app")  # its own checkpoint: broadcast, one vote of three
    sent = [o.msg for o in outbox.flush()]
    assert [type(m) for m in sent] == [Checkpoint] and sent[0].app_digest == "app"
    log.send_proof(0)
    assert outbox.flush() == []  # no table at h: nothing to prove with
    log.executed(4, "d" * 64, table)  # executing 4 fills it in
    assert log.complete and log.stable.clients == table
    log.send_proof(0)
    (out,) = outbox.flush()
    assert out.to == 0 and isinstance(out.msg, StateProof) and out.msg.proof == tuple(votes)


def test_heartbeat_rearms_its_timer_and_is_quiet_when_idle():
    outbox = Outbox(keys_for(4)[0], 0)
    beat = Heartbeat(outbox, 0, PBFTConfig(idle_status_every=3))

    def tick(busy=False):
        beat.tick(0, True, 0, 0, busy)
        out = outbox.flush()
        assert [o.kind for o in out if isinstance(o, SetTimer)] == [TimerKind.STATUS]
        return [o.msg for o in out if isinstance(o, Broadcast)]

    assert [len(tick()) for _ in range(3)] == [0, 0, 1]  # idle: every third period
    assert len(tick(busy=True)) == 1
    beat.executed()
    sent = tick()
    assert len(sent) == 1 and isinstance(sent[0], Status) and sent[0].last_executed == 0


def test_state_objects_answer_what_tests_used_to_read_privately():
    reps = make_replicas(4, client_keys=CLIENTS)
    pump = Pump(reps)
    pump.submit(0, request(1))
    pump.run()
    r = reps[2]
    assert r.slots.keys() == [(0, 1)] and r.slots.prepared_seqs() == [1]
    assert r.last_executed == r.execution.last_executed == 1
    assert not r.requests and r.view_change.mine is None


def test_checkpoint_votes_count_once_per_replica_and_seq():
    keys = keys_for(4)
    log = CheckpointLog(Outbox(keys[3], 3), 3, interval=4, log_window=8, quorum=3)
    noise = [sign(Checkpoint(4, f"{i:064x}", "", "", 0), keys[0]) for i in range(50)]
    assert not any(log.add(c) for c in noise)  # a faulty replica's many digests: one vote kept
    good = [sign(Checkpoint(4, "d" * 64, "", "", i), keys[i]) for i in (0, 1, 2)]
    assert [log.add(c) for c in good] == [False, False, False]  # replica 0 voted already
    assert log.add(sign(Checkpoint(4, "d" * 64, "", "", 3), keys[3])) and log.low == 4
