"""Checkpoints taking effect and state transfer (Castro & Liskov, OSDI 1999, section 4.3).

A replica signs its checkpoint at every K-th executed sequence number, at once or, with
application checkpoints, once its driver answered ``CheckpointDue`` with the digest of
its state. When a checkpoint becomes stable the log at and below it is dropped (slots,
request bodies, executed entries) and the driver gets ``Stabilised`` to persist it.
A replica behind a stable checkpoint can no longer get the log up to it (its peers
dropped it): it asks its driver for the state (``FetchState``), executes nothing until
``state_transferred``, and then continues from the checkpoint. :class:`StateTransfer`
owns that target and these steps over the replica's other parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Optional

from .checkpoint import CheckpointLog, valid_stable
from .execution import ExecutionLog
from .limits import MAX_APP_DIGEST
from .messages import CatchUp, Checkpoint, CommittedEntry, StateProof
from .outbox import Outbox
from .outputs import CheckpointDue, FetchState, Stabilised
from .slots import SlotLog
from .state import StableCheckpoint

__all__ = ["StateTransfer"]


class StateTransfer:
    """Checkpoint steps of a replica with ``keys``, over its ``checkpoints``, ``execution``
    and ``slots``, through ``outbox``; ``app_checkpoints`` as in :class:`~.state.PBFTConfig`,
    ``catchup_batch`` bounds how far ahead certified entries are taken. The replica's
    ``on_stable(seq)`` runs when a checkpoint became stable, ``resume()`` executes what
    is ready. ``target`` is the stable checkpoint whose state the driver is fetching."""

    def __init__(
        self, outbox: Outbox, keys: Sequence[str], app_checkpoints: bool, catchup_batch: int,
        checkpoints: CheckpointLog, execution: ExecutionLog, slots: SlotLog,
        on_stable: Callable[[int], None], resume: Callable[[], None],
    ) -> None:
        self._outbox = outbox
        self._keys = tuple(keys)
        self._app = app_checkpoints
        self._batch = catchup_batch
        self._cps = checkpoints
        self._ex = execution
        self._slots = slots
        self._on_stable = on_stable
        self._resume = resume
        self.target: Optional[StableCheckpoint] = None

    # ------------------------------------------------------------------ messages

    def on_checkpoint(self, c: Checkpoint) -> None:
        if self._cps.accepts(c) and self._cps.add(c):
            self._on_stable(c.seq)

    def on_state_proof(self, msg: StateProof) -> None:
        """A peer's proof of a stable checkpoint (and its table)."""
        cp = self._cps.proven(msg, self._keys)
        if cp is None or cp.seq < self._cps.low:
            return
        if self._cps.advance(cp.seq, cp.state_digest, cp.proof, cp.clients):
            self._on_stable(cp.seq)
        else:
            self.check_behind()  # the table at h may just have come

    def on_catch_up(self, msg: CatchUp) -> None:
        self.take_entries(msg.entries)

    def take_entries(self, entries: Iterable[CommittedEntry]) -> None:
        """Certified committed entries from a peer: queue those this replica lacks, run."""
        self._ex.take_certified(entries, self._keys, self._ex.last_executed + 4 * self._batch)
        self._resume()

    # ------------------------------------------------------------------ steps

    def executed(self, seq: int) -> None:
        """Checkpoint ``seq`` executed: sign it, or ask the driver for its digest first."""
        if self._cps.executed(seq, self._ex.state_digest, self._ex.clients.snapshot()):
            self._outbox.emit(Stabilised(self._cps.stable))  # stable already, now with its table
        if self._app:
            self._outbox.emit(CheckpointDue(seq))
        else:
            self.ready(seq, "")

    def ready(self, seq: int, app_digest: str) -> None:
        """The driver's digest for checkpoint ``seq``: sign and count the checkpoint."""
        if not isinstance(app_digest, str) or len(app_digest) > MAX_APP_DIGEST:
            raise ValueError(f"app_digest must be a str of at most {MAX_APP_DIGEST} characters")
        if self._cps.take(seq, app_digest):
            self._on_stable(seq)

    def stabilised(self, seq: int) -> None:
        """Checkpoint ``seq`` became stable: drop the log up to it, tell the driver."""
        self._slots.truncate(seq)
        self._ex.truncate(seq)
        if self._cps.complete:
            self._outbox.emit(Stabilised(self._cps.stable))
        self.check_behind()

    def check_behind(self) -> None:
        """Behind a stable checkpoint whose table is known: fetch the state there (without
        the table, this replica's status makes a peer send it)."""
        cp = self._cps.stable
        if self._ex.last_executed < cp.seq and self._cps.complete and (self.target is None or cp.seq > self.target.seq):
            self.target = cp
            self._outbox.emit(FetchState(cp))

    def remind(self) -> None:
        """The heartbeat: ask again while the state is outstanding."""
        if self.target is not None:
            self._outbox.emit(FetchState(self.target))

    def install(self, cp: StableCheckpoint) -> None:
        """The state at ``cp`` is installed: jump execution (and h) to it, then run what is
        ready. ValueError when ``cp`` is not proven by 2f+1 signatures."""
        if not valid_stable(cp, self._keys):
            raise ValueError("the checkpoint's proof does not check out")
        if cp.seq > self._ex.last_executed:
            self._ex.jump(cp.seq, cp.state_digest, cp.clients)
        if self.target is not None and self.target.seq <= self._ex.last_executed:
            self.target = None
        if cp.seq >= self._cps.low and self._cps.advance(cp.seq, cp.state_digest, cp.proof, cp.clients):
            self._on_stable(cp.seq)
        else:
            if cp.seq == self._cps.low and cp.seq:
                self._outbox.emit(Stabilised(self._cps.stable))
            self.check_behind()
        self._resume()
