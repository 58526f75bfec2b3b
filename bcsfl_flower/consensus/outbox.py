"""The replica's outputs in the making: signed messages, timers and notices (sans-IO).

Nothing here performs I/O. :class:`Outbox` signs the replica's messages, collects what
one call into the replica asks its driver to do (``Send``, ``Broadcast``, ``Committed``,
``SetTimer``, ``CancelTimer``, ``ViewEntered``) until :meth:`Outbox.flush`, and keeps the
id of the armed timer of each :class:`~.state.TimerKind`, so a stale firing is ignored.
"""

from __future__ import annotations

from typing import Optional

from ..crypto import SigningKey
from .messages import Signed, sign
from .outputs import Broadcast, CancelTimer, Output, Send, SetTimer
from .state import TimerKind

__all__ = ["Outbox"]


class Outbox:
    """Outputs, signatures and armed timers of replica ``index`` (which signs with ``key``)."""

    def __init__(self, key: SigningKey, index: int) -> None:
        self._key = key
        self.index = index
        self._out: list[Output] = []
        #: Ed25519 is deterministic: an identical message (a heartbeat, a retransmitted
        #: view-change) reuses its signature.
        self._sig_memo: dict[bytes, bytes] = {}
        self._timers: dict[TimerKind, int] = {}
        self._timer_seq = 0
        #: Size bound per message tag (:func:`~.limits.message_bounds`; empty: none).
        self.bounds: dict[str, int] = {}
        #: Messages not sent because they were over their bound (a bug if ever non-zero).
        self.oversize = 0

    def sign(self, msg: Signed) -> Signed:
        """``msg`` (built with ``sig=b""``) signed with this replica's key."""
        return sign(msg, self._key, self._sig_memo)

    def emit(self, output: Output) -> None:
        self._out.append(output)

    def broadcast(self, msg: Signed) -> None:
        if self._fits(msg):
            self._out.append(Broadcast(msg))

    def send(self, to: int, msg: Signed) -> None:
        """Send ``msg`` to replica ``to`` (nothing when that is this replica)."""
        if to != self.index and self._fits(msg):
            self._out.append(Send(to, msg))

    def _fits(self, msg: Signed) -> bool:
        """Within its size bound: a peer's decoder would refuse it otherwise."""
        bound = self.bounds.get(msg.TAG)
        if bound is None or len(msg.encoded()) <= bound:
            return True
        self.oversize += 1
        return False

    def flush(self) -> list[Output]:
        """Everything emitted since the last flush, in order."""
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ timers

    def set_timer(self, kind: TimerKind, delay: float) -> None:
        """Arm the timer of ``kind`` (a fresh id: the driver replaces the old one)."""
        self._timer_seq += 1
        self._timers[kind] = self._timer_seq
        self._out.append(SetTimer(self._timer_seq, kind, delay))

    def cancel_timer(self, kind: TimerKind) -> None:
        tid = self._timers.pop(kind, None)
        if tid is not None:
            self._out.append(CancelTimer(tid, kind))

    def armed(self, kind: TimerKind) -> bool:
        return kind in self._timers

    def fired(self, timer_id: int) -> Optional[TimerKind]:
        """The kind of the armed timer ``timer_id`` (now disarmed); None for a stale id."""
        kind = next((k for k, t in self._timers.items() if t == timer_id), None)
        if kind is not None:
            del self._timers[kind]
        return kind
