"""Replica configuration and log records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .messages import Checkpoint, Commit, Prepare, PrePrepare

__all__ = ["PBFTConfig", "StableCheckpoint", "Slot"]


@dataclass(frozen=True)
class PBFTConfig:
    """Protocol constants (time in the driver's units)."""

    checkpoint_interval: int = 16  # K
    log_window: int = 32  # L: high water mark = low water mark + L
    request_timeout: float = 60.0  # base timeout; doubles per failed view change
    max_timeout: float = 1000.0  # cap on the doubled timeout
    status_interval: float = 15.0  # heartbeat period while there is work
    idle_status_every: int = 4  # heartbeat every this many periods when idle
    catchup_batch: int = 64  # committed entries per CatchUp message
    # A peer behind by at most catchup_lag executed requests is sent CatchUp only after
    # catchup_patience statuses in a row without progress: a peer a few slots behind
    # under load is moving on its own, and re-sending it whole batches it is about to
    # execute wastes both ends.
    catchup_lag: int = 4
    catchup_patience: int = 2
    forward_requests: bool = True  # backups relay client requests to the primary


@dataclass(frozen=True)
class StableCheckpoint:
    seq: int
    state_digest: str
    proof: tuple[Checkpoint, ...]


class Slot:
    """Log entry for one (view, seq)."""

    __slots__ = ("pp", "prepares", "commits", "prepared", "sent_commit", "committed")

    def __init__(self) -> None:
        self.pp: Optional[PrePrepare] = None
        self.prepares: dict[int, Prepare] = {}
        self.commits: dict[int, Commit] = {}
        self.prepared = False
        self.sent_commit = False
        self.committed = False
