"""Replica configuration, the replica status and timer kinds, and the stable checkpoint record.

The constants are those of Castro & Liskov, "Practical Byzantine Fault Tolerance" (OSDI
1999): the checkpoint interval K and log window L of section 4.3 (garbage
collection), the view-change timeout of section 4.4 and its doubling (section 4.5.2,
liveness). The status heartbeat and the catch-up limits are this package's own (the
paper leaves retransmission and state transfer to the implementation).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .messages import Checkpoint

__all__ = ["PBFTConfig", "ReplicaStatus", "StableCheckpoint", "TimerKind"]


@dataclass(frozen=True)
class PBFTConfig:
    """Protocol constants (time in the driver's units).

    Parameters
    ----------
    checkpoint_interval : int, default 16
        K: a checkpoint every K executed sequence numbers.
    log_window : int, default 32
        L: the high water mark is the low water mark + L (at least K).
    request_timeout : float, default 60.0
        Base timeout of the request and view-change timers; doubles per failed view change.
    max_timeout : float, default 1000.0
        Cap on the doubled timeout.
    status_interval : float, default 15.0
        Heartbeat period while there is work.
    idle_status_every : int, default 4
        When idle, a heartbeat only every this many periods.
    catchup_batch : int, default 64
        Committed entries per CatchUp message.
    catchup_lag : int, default 4
        A peer behind by at most this many executed requests is sent CatchUp only after
        ``catchup_patience`` statuses in a row without progress: a peer a few slots behind
        under load is moving on its own, and re-sending it whole batches it is about to
        execute wastes both ends.
    catchup_patience : int, default 2
        See ``catchup_lag``.
    forward_requests : bool, default True
        Backups relay client requests to the primary.
    """

    checkpoint_interval: int = 16
    log_window: int = 32
    request_timeout: float = 60.0
    max_timeout: float = 1000.0
    status_interval: float = 15.0
    idle_status_every: int = 4
    catchup_batch: int = 64
    catchup_lag: int = 4
    catchup_patience: int = 2
    forward_requests: bool = True


class _StrEnum(str, Enum):
    """An enum whose members are their string values (JSON, dict keys, formatting)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ReplicaStatus(_StrEnum):
    """Whether the replica orders requests in its view or is changing views (section 4.4)."""

    NORMAL = "normal"
    VIEW_CHANGE = "view-change"


class TimerKind(_StrEnum):
    """What a ``SetTimer`` / ``CancelTimer`` is for; at most one timer of each kind is armed."""

    #: A backup waits this long for a pending request to execute before suspecting the
    #: primary (section 4.4).
    REQUEST = "request"
    #: Started once 2f+1 replicas are in the new view; on expiry move one view further
    #: with the timeout doubled (section 4.5.2).
    VIEW_CHANGE = "view-change"
    #: The status heartbeat: retransmission of checkpoints and view-changes, catch-up.
    STATUS = "status"


@dataclass(frozen=True)
class StableCheckpoint:
    """The replica's stable checkpoint: ``seq`` (the low water mark), the state digest
    there, and the 2f+1 signed checkpoint messages that prove it (none for seq 0)."""

    seq: int
    state_digest: str
    proof: tuple[Checkpoint, ...]
