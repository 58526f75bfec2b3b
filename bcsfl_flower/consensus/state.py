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
        Committed entries per CatchUp message, at most.
    catchup_bytes : int, default 8 MiB
        Encoded size of a CatchUp message's entries, at most (one entry always goes,
        whatever its size: it is bounded by ``max_request_bytes``).
    catchup_lag : int, default 4
        A peer behind by at most this many executed requests is sent CatchUp only after
        ``catchup_patience`` statuses in a row without progress: a peer a few slots behind
        under load is moving on its own, and re-sending it whole batches it is about to
        execute wastes both ends.
    catchup_patience : int, default 2
        See ``catchup_lag``.
    catchup_resend : int, default 10
        Entries handed to a lagging peer by catch-up are not sent to it again until it
        reported this many statuses in a row without progress (a message lost, a
        restart): a peer behind reports every heartbeat, far more often than it runs
        what it was sent, and re-sending it the whole window each time swamps both ends.
        The proof of a stable checkpoint is re-sent after as many statuses.
    forward_requests : bool, default True
        Backups relay client requests to the primary.
    app_checkpoints : bool, default False
        The driver's application state is part of each checkpoint (section 4.3): at a
        checkpoint sequence number the replica emits ``CheckpointDue`` and signs its
        checkpoint only once the driver calls ``checkpoint_ready`` with the digest of its
        state there. False: the checkpoint's application digest is "" (simulator, tests).
        All replicas of a cluster must agree on it, or no checkpoint becomes stable.
    dedup_window : int, default 64
        At-most-once record (:mod:`.dedup`): per client, rids more than this far below
        its highest executed rid count as executed.
    dedup_clients : int, default 1024
        At-most-once record: clients kept (the least recently executed one goes first).
    max_request_bytes : int, default 24 MiB
        Encoded size of a client request (value, ids, signature), at most: larger ones
        are refused. The default holds a 16 MiB model base64-encoded (21.3 MiB) plus the
        ledger's JSON envelope; every message's size bound follows (:mod:`.limits`),
        the largest one (a pre-prepare) well under the 64 MiB frame of a ledger node.
    """

    checkpoint_interval: int = 16
    log_window: int = 32
    request_timeout: float = 60.0
    max_timeout: float = 1000.0
    status_interval: float = 15.0
    idle_status_every: int = 4
    catchup_batch: int = 64
    catchup_bytes: int = 8 * 1024 * 1024
    catchup_lag: int = 4
    catchup_patience: int = 2
    catchup_resend: int = 10
    forward_requests: bool = True
    app_checkpoints: bool = False
    dedup_window: int = 64
    dedup_clients: int = 1024
    max_request_bytes: int = 24 * 1024 * 1024


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
    """A stable checkpoint (section 4.3): ``seq`` (the low water mark), ``state_digest``
    (the execution hash chain there), the 2f+1 signed checkpoint messages that prove it
    (none for seq 0), the driver's ``app_digest`` they sign ("" without application
    checkpoints) and ``clients``, the at-most-once table (:mod:`.dedup`) whose digest they
    sign. A driver persists it (:meth:`to_json`) to restart from it."""

    seq: int
    state_digest: str
    proof: tuple[Checkpoint, ...]
    app_digest: str = ""
    clients: tuple[tuple[str, int, tuple[int, ...], int], ...] = ()

    def to_json(self) -> dict:
        """Plain JSON (hex signatures); :meth:`from_json` reverses it."""
        return {
            "seq": self.seq, "state_digest": self.state_digest, "app_digest": self.app_digest,
            "clients": [[c, top, list(gaps), s] for c, top, gaps, s in self.clients],
            "proof": [{"sender": c.sender, "sig": c.sig.hex()} for c in self.proof],
            "clients_digest": self.proof[0].clients_digest if self.proof else "",
        }

    @classmethod
    def from_json(cls, obj: dict) -> StableCheckpoint:
        """Rebuild from :meth:`to_json`; the signatures are checked by whoever uses it."""
        seq, digest, app = int(obj["seq"]), str(obj["state_digest"]), str(obj["app_digest"])
        clients = tuple((str(c), int(top), tuple(int(g) for g in gaps), int(s)) for c, top, gaps, s in obj["clients"])
        cd = str(obj["clients_digest"])
        proof = tuple(
            Checkpoint(seq, digest, app, cd, int(c["sender"]), bytes.fromhex(c["sig"])) for c in obj["proof"]
        )
        return cls(seq, digest, proof, app, clients)
