"""A replica fetching state still votes: agreement does not need execution.

The soak's worst stall: the primary is killed while a backup that was frozen for 30 s is
still fetching the state at the peers' stable checkpoint. Of four replicas, one is dead
and one executes nothing until its transfer is done; the other two need the recovering
one's prepares and commits (2f + 1 = 3) to order anything. A replica that holds the proof
of the stable checkpoint has the current water marks, so it prepares and commits new
sequence numbers and joins the view change at once; it executes them after the transfer.
"""

from __future__ import annotations

from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.replica import NORMAL, PBFTConfig
from bcsfl_flower.consensus.state import TimerKind

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
CFG = PBFTConfig(checkpoint_interval=4, log_window=8, request_timeout=10.0, app_checkpoints=False)


def test_primary_killed_while_a_backup_fetches_state_the_other_three_keep_ordering():
    reps = make_replicas(4, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    pump.down = {3}  # frozen: the others go through several stable checkpoints
    for rid in range(18):
        pump.submit(0, request(rid))
        pump.run()
    assert [r.last_executed for r in reps] == [18, 18, 18, 0] and reps[0].h == 16
    pump.down = set()
    for _ in range(CFG.idle_status_every):  # it is back: its status gets it the checkpoint's proof
        pump.fire(3, TimerKind.STATUS)
        pump.run()
    assert reps[3].h == 16 and reps[3].last_executed == 0  # the window moved; nothing executed
    assert pump.fetch[3] and pump.fetch[3][-1].seq == 16  # its driver is fetching the state

    pump.down = {0}  # now the primary dies
    late = request(100, client=1)
    for i in (1, 2, 3):
        pump.submit(i, late)
    pump.run()
    for i in (1, 2, 3):
        pump.fire(i, TimerKind.REQUEST)
    pump.run()
    assert all(reps[i].view == 1 and reps[i].status == NORMAL for i in (1, 2, 3))
    for i in (1, 2):
        assert reps[i].last_executed == 19 and pump.committed[i][-1].request == late
    assert reps[3].last_executed == 0  # it voted for seq 19 without executing anything

    reps[3].state_transferred(pump.fetch[3][-1])  # the transfer completes
    pump.feed(3, reps[3].outbox.flush())
    pump.fire(3, TimerKind.STATUS)  # seq 17-18 come by catch-up; 19 it committed itself
    pump.run()
    assert reps[3].last_executed == 19 and reps[3].state_digest == reps[1].state_digest
