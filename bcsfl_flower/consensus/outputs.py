"""What a replica asks its driver to do: the outputs of every input method (sans-IO).

``Send``/``Broadcast`` carry the protocol messages of Castro & Liskov's PBFT (OSDI 1999,
section 4); ``Committed`` is the execution of section 4.2 (in sequence order, with the
commit quorum certificate); ``SetTimer``/``CancelTimer`` arm and disarm the timers of
sections 4.4 and 4.5.2 and the status heartbeat (:class:`~.state.TimerKind`);
``ViewEntered`` reports a NEW-VIEW installed (section 4.4). The checkpoints of section 4.3:
``CheckpointDue`` asks the driver for its application digest at a checkpoint,
``Stabilised`` hands it each new stable checkpoint to persist, and ``FetchState`` asks it
to fetch the state at a stable checkpoint the log no longer reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from .messages import Request, Signed
    from .state import StableCheckpoint, TimerKind

__all__ = [
    "Send", "Broadcast", "Committed", "SetTimer", "CancelTimer", "ViewEntered", "CheckpointDue",
    "Stabilised", "FetchState", "Output",
]


@dataclass(frozen=True)
class Send:
    """Deliver ``msg`` to replica ``to``."""

    to: int
    msg: Signed


@dataclass(frozen=True)
class Broadcast:
    """Deliver ``msg`` to every other replica."""

    msg: Signed


@dataclass(frozen=True)
class Committed:
    """Sequence number ``seq`` executed, in order, with its quorum certificate.

    ``noop`` is True for a null request or a request whose key already executed;
    ``request`` is still set for the latter.
    """

    seq: int
    view: int
    digest: str
    request: Optional[Request]
    noop: bool
    certificate: Any  # quorum.QuorumCertificate

    @property
    def value(self) -> str | None:
        return None if self.noop or self.request is None else self.request.value


@dataclass(frozen=True)
class SetTimer:
    """Call ``on_timer(timer_id)`` after ``delay`` time units (replaces any timer of ``kind``).

    ``kind`` is a :class:`~.state.TimerKind`, a ``str`` enum: drivers may key timers by it.
    """

    timer_id: int
    kind: TimerKind
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    """Disarm the timer ``timer_id`` of ``kind`` (set by an earlier ``SetTimer``)."""

    timer_id: int
    kind: TimerKind


@dataclass(frozen=True)
class ViewEntered:
    """The replica installed ``view`` (normal operation under ``primary``)."""

    view: int
    primary: int


@dataclass(frozen=True)
class CheckpointDue:
    """With ``PBFTConfig.app_checkpoints``: ``seq`` is a checkpoint and every ``Committed``
    up to it came before this output. Compute the application state's digest there (a
    string of at most 512 characters) and call ``Replica.checkpoint_ready(seq, digest)``."""

    seq: int


@dataclass(frozen=True)
class Stabilised:
    """``checkpoint`` is this replica's new stable checkpoint (the log below it is gone):
    persist it, with the application state at ``checkpoint.seq``, to restart from it
    (``Replica(..., initial=checkpoint)``). It comes once the replica holds the
    checkpoint's at-most-once table; if it has not executed up to ``checkpoint.seq``
    (``Replica.last_executed``), a ``FetchState`` follows, and after the transfer the same
    checkpoint comes again."""

    checkpoint: StableCheckpoint


@dataclass(frozen=True)
class FetchState:
    """The replica is behind ``checkpoint`` (proven stable) and its peers no longer hold
    the log up to it. Fetch the application state at ``checkpoint.seq`` from peers, check
    it against ``checkpoint.app_digest``, install it, then call
    ``Replica.state_transferred(checkpoint)``; until then nothing executes. Emitted again
    on the heartbeat while still behind, and for a newer target."""

    checkpoint: StableCheckpoint


Output = Union[
    Send, Broadcast, Committed, SetTimer, CancelTimer, ViewEntered, CheckpointDue, Stabilised, FetchState,
]
