"""Checkpoints and water marks (Castro & Liskov, OSDI 1999, section 4.3), and the heartbeat.

Garbage collection, section 4.3: every K executed sequence numbers a replica signs
``Checkpoint(seq, state_digest)``; 2f+1 matching ones make the checkpoint stable (the
proof of its correctness), the low water mark h moves to it, the log below it is
dropped, and the window (h, h + L] of sequence numbers a replica accepts slides.
:class:`CheckpointLog` owns h, the stable checkpoint and its proof, the checkpoint votes
and the replica's own latest checkpoint (retransmitted until stable).

The heartbeat is this package's retransmission and state-transfer trigger (the paper
leaves both to the implementation): a replica broadcasts a signed ``Status`` saying how
far it executed; peers answer with the committed entries it lacks (each with its commit
quorum certificate), their stable checkpoint proof, and the NEW-VIEW of the current
view. :class:`Heartbeat` owns what a replica knows of its peers' progress and decides
when to send a status and when a peer needs catch-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .dedup import Snapshot, table_digest
from .execution import ExecutionLog
from .limits import MAX_APP_DIGEST
from .messages import GENESIS_DIGEST, CatchUp, Checkpoint, StateProof, Status
from .outbox import Outbox
from .state import PBFTConfig, StableCheckpoint, TimerKind
from .viewchange import valid_checkpoint_proof

__all__ = ["CheckpointLog", "Heartbeat", "valid_stable"]


def valid_stable(cp: StableCheckpoint, keys: Sequence[str]) -> bool:
    """``cp`` is proven: 2f+1 signed checkpoints for its seq, digests and client table."""
    return isinstance(cp, StableCheckpoint) and valid_checkpoint_proof(
        cp.seq, cp.state_digest, cp.proof, keys, cp.app_digest, table_digest(cp.clients)
    )


class CheckpointLog:
    """Stable checkpoint, water marks and checkpoint votes of replica ``index``
    (section 4.3), which signs and sends its checkpoint messages through ``outbox``.

    Besides the proof it keeps the at-most-once table at the stable checkpoint when this
    replica has it (it executed there, or got it with a proof); a checkpoint made stable
    by a NEW-VIEW or by votes ahead of this replica lacks it until a :class:`StateProof`.
    """

    def __init__(self, outbox: Outbox, index: int, interval: int, log_window: int, quorum: int) -> None:
        self._outbox = outbox
        self._index = index
        self.interval = interval
        self.log_window = log_window
        self.quorum = quorum
        #: The low water mark h: sequence number of the stable checkpoint.
        self.low = 0
        self._stable = StableCheckpoint(0, GENESIS_DIGEST, ())
        self._complete = True  # the table at ``low`` is known
        self._votes: dict[int, dict[tuple[str, str, str], dict[int, Checkpoint]]] = {}
        self._own: Optional[Checkpoint] = None
        self._mine: dict[int, tuple[str, Snapshot]] = {}  # executed here, above low

    @property
    def high(self) -> int:
        """The high water mark h + L."""
        return self.low + self.log_window

    def in_window(self, seq: int, widen: int = 1) -> bool:
        """h < seq <= h + widen * L."""
        return self.low < seq <= self.low + widen * self.log_window

    @property
    def stable(self) -> StableCheckpoint:
        return self._stable

    @property
    def complete(self) -> bool:
        """The at-most-once table at the stable checkpoint is known here."""
        return self._complete

    def executed(self, seq: int, state_digest: str, clients: Snapshot) -> bool:
        """This replica executed checkpoint ``seq`` (it signs once the app digest is known);
        True when that gave it the table of a stable checkpoint it lacked."""
        if seq > self.low:
            self._mine[seq] = (state_digest, clients)
        elif seq == self.low and not self._complete and state_digest == self._stable.state_digest:
            self.advance(seq, state_digest, self._stable.proof, clients)
            return self._complete
        return False

    def take(self, seq: int, app_digest: str) -> bool:
        """Sign this replica's checkpoint ``seq`` with ``app_digest`` and, when above h,
        broadcast and count it; True when that made it stable."""
        mine = self._mine.get(seq)
        if mine is None:
            return False  # below h already, or never executed here
        c = self._outbox.sign(Checkpoint(seq, mine[0], app_digest, table_digest(mine[1]), self._index))
        self._own = c
        self._outbox.broadcast(c)
        return self.add(c)

    def retransmit(self) -> None:
        """Broadcast the own latest checkpoint again while it is not yet stable."""
        own = self._own
        if own is not None and own.seq > self.low:
            self._outbox.broadcast(own)

    def send_proof(self, to: int) -> None:
        """Send replica ``to`` the stable checkpoint, its proof and table (when held)."""
        cp = self._stable
        if cp.seq > 0 and self._complete:
            msg = StateProof(cp.seq, cp.state_digest, cp.app_digest, cp.clients, cp.proof, self._index)
            self._outbox.send(to, self._outbox.sign(msg))

    def accepts(self, c: Checkpoint) -> bool:
        """A peer's checkpoint worth counting: a multiple of K, not too far ahead."""
        return self.in_window(c.seq, 4) and c.seq % self.interval == 0 and len(c.app_digest) <= MAX_APP_DIGEST

    def add(self, c: Checkpoint) -> bool:
        """Count the vote ``c``; True when it made checkpoint ``c.seq`` stable. Votes match
        on every digest: replicas that disagree on the application state never agree."""
        key = (c.state_digest, c.app_digest, c.clients_digest)
        by_key = self._votes.setdefault(c.seq, {})
        if any(c.sender in v for k, v in by_key.items() if k != key):
            return False  # one vote per replica and seq: a faulty one cannot fill memory
        votes = by_key.setdefault(key, {})
        votes.setdefault(c.sender, c)
        if len(votes) >= self.quorum:
            proof = tuple(sorted(votes.values(), key=lambda m: m.sender)[: self.quorum])
            return self.advance(c.seq, c.state_digest, proof)
        return False

    def advance(self, seq: int, digest: str, proof: tuple[Checkpoint, ...], clients: Optional[Snapshot] = None) -> bool:
        """Checkpoint ``seq`` is stable (``proof``; ``clients``: its table, if known): move h
        to it. False when not above h (a missing table at h is still filled in)."""
        app = proof[0].app_digest if proof else ""
        want = proof[0].clients_digest if proof else table_digest(())
        if clients is not None and table_digest(clients) != want:
            clients = None
        mine = self._mine.get(seq)
        if clients is None and mine is not None and mine[0] == digest and table_digest(mine[1]) == want:
            clients = mine[1]
        if seq < self.low or (seq == self.low and (self._complete or clients is None)):
            return False
        self._complete = clients is not None
        self._stable = StableCheckpoint(seq, digest, proof, app, clients or ())
        if seq == self.low:
            return False
        self.low = seq
        self._votes = {q: c for q, c in self._votes.items() if q > seq}
        self._mine = {q: m for q, m in self._mine.items() if q > seq}
        return True

    def proven(self, msg: StateProof, keys: Sequence[str]) -> Optional[StableCheckpoint]:
        """The stable checkpoint a :class:`StateProof` proves, or None."""
        cp = StableCheckpoint(msg.seq, msg.state_digest, msg.proof, msg.app_digest, msg.clients)
        ok = msg.seq > 0 and msg.seq % self.interval == 0 and valid_stable(cp, keys)
        return cp if ok else None


class Heartbeat:
    """Peers' progress as their statuses report it; replica ``index``'s own status and the
    catch-up it sends through ``outbox``."""

    def __init__(self, outbox: Outbox, index: int, config: PBFTConfig) -> None:
        self._outbox = outbox
        self._index = index
        self.cfg = config
        self._peer_exec: dict[int, int] = {}
        self._peer_stalls: dict[int, int] = {}  # statuses in a row without progress
        self._handed: dict[int, int] = {}  # peer -> highest seq sent it by catch-up (in flight)
        self._proved: dict[int, tuple[int, int]] = {}  # peer -> (checkpoint whose proof it got, statuses since)
        self._activity = False
        self._idle_ticks = 0

    def start(self) -> None:
        """Arm the status timer."""
        self._outbox.set_timer(TimerKind.STATUS, self.cfg.status_interval)

    def executed(self) -> None:
        """This replica executed something since the last tick."""
        self._activity = True

    def tick(self, view: int, normal: bool, last_executed: int, stable_seq: int, busy: bool) -> bool:
        """The status timer fired: re-arm it and broadcast the status when due (always when
        ``busy``, a peer is ahead or something executed; else every ``idle_status_every``)."""
        self._outbox.set_timer(TimerKind.STATUS, self.cfg.status_interval)
        behind = max(self._peer_exec.values(), default=0) > last_executed
        active = busy or behind or self._activity
        self._idle_ticks += 1
        due = active or self._idle_ticks >= self.cfg.idle_status_every
        if due:
            self._idle_ticks = 0
            self.announce(view, normal, last_executed, stable_seq)
        self._activity = False
        return due

    def announce(self, view: int, normal: bool, last_executed: int, stable_seq: int) -> None:
        """Broadcast this replica's status now."""
        self._outbox.broadcast(self._outbox.sign(Status(view, normal, last_executed, stable_seq, self._index)))

    def observe(self, st: Status, execution: ExecutionLog, checkpoints: CheckpointLog) -> None:
        """Peer ``st.sender`` reported ``st``: send it the entries it lacks, if it needs them,
        and the proof of our stable checkpoint if it is below it.

        A peer far behind gets entries at once; one at most ``catchup_lag`` behind only
        after ``catchup_patience`` statuses in a row without progress; one below our
        checkpoint none (it can run none before its state transfer, and they may be large).
        A catch-up message holds at most ``catchup_bytes`` of entries (at least one).

        Flow control: a lagging peer reports its status every heartbeat, far more often
        than it can run a batch of entries. Entries already handed to it are not sent
        again while it makes progress: each status brings only those above what is in
        flight, up to ``catchup_batch`` beyond where it stands; after ``catchup_resend``
        statuses in a row without progress (a message lost, the peer restarted) the
        window is sent again from where it stands. The same holds for the checkpoint
        proof: sent once per stable checkpoint, again only after as many statuses.
        """
        j = st.sender
        missing = self._missing(st, execution.last_executed)
        stalled = self._peer_stalls.get(j, 0) >= self.cfg.catchup_resend
        if missing is not None and st.last_executed >= checkpoints.low:
            lo, hi = missing
            handed = self._handed.get(j, 0)
            if handed > lo and not stalled:
                lo = handed  # in flight already: only what follows
            batch, size = [], 0
            for entry in execution.entries(lo, hi) if lo < hi else ():
                size += len(entry.encoded())
                if batch and size > self.cfg.catchup_bytes:
                    break
                batch.append(entry)
            if batch:
                self._outbox.send(j, self._outbox.sign(CatchUp(tuple(batch), self._index)))
                self._handed[j] = batch[-1].seq
                self._peer_stalls[j] = 0
        if min(st.stable_seq, st.last_executed) < checkpoints.low:  # below our checkpoint
            seq, since = self._proved.get(j, (-1, 0))
            if seq != checkpoints.low or since + 1 >= self.cfg.catchup_resend:
                checkpoints.send_proof(j)
                self._proved[j] = (checkpoints.low, 0)
            else:
                self._proved[j] = (seq, since + 1)

    def _missing(self, st: Status, last_executed: int) -> Optional[tuple[int, int]]:
        j = st.sender
        previous = self._peer_exec.get(j)
        self._peer_exec[j] = st.last_executed
        if previous is not None and st.last_executed < previous:
            self._handed.pop(j, None)  # it went back (restarted): what it was handed is gone
        if previous is not None and previous >= st.last_executed:
            self._peer_stalls[j] = self._peer_stalls.get(j, 0) + 1
        else:
            self._peer_stalls[j] = 0
        cfg = self.cfg
        if 0 <= st.last_executed < last_executed and (
            self._peer_stalls[j] >= cfg.catchup_patience
            or last_executed - st.last_executed > cfg.catchup_lag
        ):
            return st.last_executed, min(last_executed, st.last_executed + cfg.catchup_batch)
        return None
