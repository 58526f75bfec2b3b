"""Checkpoints, water marks, the status heartbeat and catch-up (state transfer).

Every K executed sequence numbers a replica signs ``Checkpoint(seq, state_digest)``;
2f+1 matching ones make the checkpoint stable: the low water mark moves to it, the log
below it is dropped, and the window (h, h + L] slides. Checkpoint messages are
retransmitted on the heartbeat until stable, and a peer behind the stable checkpoint
gets the proof.

Catch-up: the heartbeat ``Status`` says how far a replica executed; peers answer with
the committed entries it lacks, each with its commit quorum certificate. Executing a
certified entry needs no trust in the peer that sent it, so a replica that missed
messages (or restarts from a checkpoint, or is a fresh ledger node) converges without a
view change. :meth:`Replica.install` is the same path for an external state transfer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .messages import CatchUp, Checkpoint, CommittedEntry, Status
from .quorum import QuorumCertificate, entry_matches, verify
from .viewchange import NORMAL, VIEW_CHANGE

if TYPE_CHECKING:  # pragma: no cover
    from .replica import Replica

__all__ = ["CheckpointMixin"]


class CheckpointMixin:
    """Checkpoint and catch-up half of :class:`~bcsfl_flower.consensus.replica.Replica`."""

    # ============================================================ checkpoints

    def _take_checkpoint(self: Replica, s: int) -> None:
        c = self._signed(Checkpoint(s, self._state_digest, self.index))
        self._own_checkpoint = c
        if s > self.h:
            self._broadcast(c)
            self._add_checkpoint(c)

    def _on_checkpoint(self: Replica, c: Checkpoint) -> None:
        k = self.cfg.checkpoint_interval
        if self.h < c.seq <= self.h + 4 * self.cfg.log_window and c.seq % k == 0:
            self._add_checkpoint(c)

    def _add_checkpoint(self: Replica, c: Checkpoint) -> None:
        votes = self._checkpoints.setdefault(c.seq, {}).setdefault(c.state_digest, {})
        votes.setdefault(c.sender, c)
        if len(votes) >= self.quorum:
            proof = tuple(sorted(votes.values(), key=lambda m: m.sender)[: self.quorum])
            self._make_stable(c.seq, c.state_digest, proof)

    def _make_stable(self: Replica, s: int, digest: str, proof: tuple[Checkpoint, ...]) -> None:
        """Checkpoint ``s`` is stable: move the water marks and truncate the log."""
        if s <= self.h:
            return
        self.h = s
        self._stable_digest = digest
        self._stable_proof = proof
        self._slots = {k: v for k, v in self._slots.items() if k[1] > s}
        self._prepared_certs = {q: c for q, c in self._prepared_certs.items() if q > s}
        self._checkpoints = {q: c for q, c in self._checkpoints.items() if q > s}
        self._future_pps = {k: v for k, v in self._future_pps.items() if k[1] > s}
        if self.status == NORMAL and self.is_primary:
            self._next_seq = max(self._next_seq, s)
            self._try_assign()

    # ============================================================ heartbeat / catch-up

    def _on_status_timer(self: Replica) -> None:
        self._set_timer("status", self.cfg.status_interval)
        behind = max(self._peer_exec.values(), default=0) > self.last_executed
        active = bool(self._pending) or self.status == VIEW_CHANGE or behind or self._activity
        self._idle_ticks += 1
        if active or self._idle_ticks >= self.cfg.idle_status_every:
            self._idle_ticks = 0
            self._broadcast(self._signed(
                Status(self.view, self.status == NORMAL, self.last_executed, self.h, self.index)
            ))
        self._activity = False
        if self.status == VIEW_CHANGE and self._my_vc is not None:
            self._broadcast(self._my_vc)
        own = self._own_checkpoint
        if own is not None and own.seq > self.h:
            self._broadcast(own)

    def _on_status(self: Replica, st: Status) -> None:
        j = st.sender
        if j == self.index:
            return
        previous = self._peer_exec.get(j)
        self._peer_exec[j] = st.last_executed
        if previous is not None and previous >= st.last_executed:
            self._peer_stalls[j] = self._peer_stalls.get(j, 0) + 1
        else:
            self._peer_stalls[j] = 0
        if 0 <= st.last_executed < self.last_executed and (
            self._peer_stalls[j] >= self.cfg.catchup_patience
            or self.last_executed - st.last_executed > self.cfg.catchup_lag
        ):
            end = min(self.last_executed, st.last_executed + self.cfg.catchup_batch)
            entries = tuple(
                CommittedEntry(c.seq, c.request, c.certificate)
                for c in self._log[st.last_executed:end]
            )
            self._send(j, self._signed(CatchUp(entries, self.index)))
        if self.status == NORMAL and self._new_view_msg is not None and (
            st.view < self.view or (st.view == self.view and not st.normal)
        ):
            self._send(j, self._new_view_msg)
        if st.stable_seq < self.h:
            for c in self._stable_proof:
                self._send(j, c)

    def _on_catch_up(self: Replica, msg: CatchUp) -> None:
        self._take_entries(msg.entries)

    def _take_entries(self: Replica, entries: Iterable[CommittedEntry]) -> None:
        limit = self.last_executed + 4 * self.cfg.catchup_batch
        for e in entries:
            if not isinstance(e, CommittedEntry) or not self.last_executed < e.seq <= limit:
                continue
            if e.seq in self._ready:
                continue
            cert = e.certificate
            if not isinstance(cert, QuorumCertificate) or not entry_matches(cert, e.seq, e.request):
                continue
            if not verify(cert, self.keys):
                continue
            self._ready[e.seq] = (cert.view, cert.digest, e.request, cert)
        self._execute_ready()
