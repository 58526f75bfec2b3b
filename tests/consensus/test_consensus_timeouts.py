"""The view-change timeout of section 4.5.2 (Castro & Liskov, OSDI 1999): doubled while
view changes fail, back to the base once the new view executes a request.

A view change fails when no new view is installed in time, and also when the new view
executes no request before the request timer expires again: only the first counted, so
a request slower than the base timeout (a loaded machine) changed views every base
timeout, for ever.
"""

from __future__ import annotations

from consensus_testkit import CLIENT_KEYS, Pump, make_replicas, request

from bcsfl_flower.consensus.messages import PrePrepare
from bcsfl_flower.consensus.replica import NORMAL, PBFTConfig
from bcsfl_flower.consensus.state import TimerKind

CLIENTS = {f"client-{i}": k.public_hex for i, k in enumerate(CLIENT_KEYS)}
CFG = PBFTConfig(checkpoint_interval=8, log_window=16, request_timeout=10.0, max_timeout=160.0)


def _fire_all(pump: Pump, kind: TimerKind, nodes) -> None:
    for i in nodes:
        pump.fire(i, kind)
    pump.run()


def test_a_request_timer_expiring_in_a_view_that_executed_nothing_doubles_the_timeout():
    reps = make_replicas(7, client_keys=CLIENTS, config=CFG)
    pump = Pump(reps)
    pump.down = {0}
    pump.drop = lambda src, dst, msg: isinstance(msg, PrePrepare)  # view 1's primary is too slow
    for i in range(1, 7):
        pump.submit(i, request(1))
    pump.run()
    _fire_all(pump, TimerKind.REQUEST, range(1, 7))
    assert all(reps[i].view == 1 and reps[i].status == NORMAL for i in range(1, 7))
    assert [reps[i].view_change.timeout for i in range(1, 7)] == [10.0] * 6  # view 0 had run nothing yet
    _fire_all(pump, TimerKind.REQUEST, range(2, 7))  # view 1 executed nothing: that view change failed
    assert all(reps[i].view == 2 for i in range(2, 7))
    assert [reps[i].view_change.timeout for i in range(2, 7)] == [20.0] * 5
    pump.drop = lambda src, dst, msg: False  # view 3's primary will be in time
    for i in range(3, 7):
        pump.fire(i, TimerKind.REQUEST)  # but view 2 executed nothing either: doubled again
        assert reps[i].view_change.timeout == 40.0
    pump.run()
    assert all(reps[i].view == 3 and reps[i].last_executed == 1 for i in range(1, 7))
    assert [reps[i].view_change.timeout for i in range(3, 7)] == [10.0] * 4  # view 3 ran a request
