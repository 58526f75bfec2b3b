"""The replica's message log for the normal case (Castro & Liskov, OSDI 1999, section 4.2).

A :class:`Slot` holds, for one (view, sequence number), the primary's pre-prepare and
the prepares and commits received; *prepared* is the pre-prepare plus 2f matching
prepares from distinct backups, *committed-local* is prepared plus 2f+1 matching commits.
:class:`SlotLog` owns the slots, the prepared certificates (the P set a view-change
carries, section 4.4) and the pre-prepares that arrived for a view not yet entered;
it is truncated at each stable checkpoint (section 4.3) and at each new view.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .messages import Commit, Prepare, PreparedCert, PrePrepare, Request
from .outbox import Outbox
from .quorum import QuorumCertificate

__all__ = ["Slot", "SlotLog"]


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

    def matching_prepares(self) -> list[Prepare]:
        """Prepares for the pre-prepare's digest from distinct backups (not its sender)."""
        pp = self.pp
        assert pp is not None
        return [p for s, p in self.prepares.items() if p.digest == pp.digest and s != pp.sender]

    def certify(self, view: int, seq: int, threshold: int, quorum: int) -> Optional[QuorumCertificate]:
        """Once ``threshold`` replicas committed the pre-prepare's digest (and only the
        first time): the commit quorum certificate, the first ``quorum`` by sender."""
        assert self.pp is not None
        if self.committed:
            return None
        d = self.pp.digest
        matching = [c for c in self.commits.values() if c.digest == d]
        if len(matching) < threshold:
            return None
        self.committed = True
        matching.sort(key=lambda c: c.sender)
        return QuorumCertificate(view, seq, d, tuple(matching[:quorum]))


class SlotLog:
    """Slots by (view, seq), prepared certificates by seq, buffered future pre-prepares of
    replica ``index``, which sends its pre-prepares, prepares and commits through ``outbox``."""

    def __init__(self, outbox: Outbox, index: int) -> None:
        self._outbox = outbox
        self._index = index
        self._slots: dict[tuple[int, int], Slot] = {}
        self._prepared: dict[int, PreparedCert] = {}
        self._future: dict[tuple[int, int], PrePrepare] = {}
        self._bodies: dict[str, tuple[int, Request]] = {}  # digest -> (highest seq, request)

    # ------------------------------------------------------------------ slots

    def slot(self, view: int, seq: int) -> Slot:
        """The slot for (view, seq), created empty when missing."""
        slot = self._slots.get((view, seq))
        if slot is None:
            slot = self._slots[(view, seq)] = Slot()
        return slot

    def get(self, view: int, seq: int) -> Optional[Slot]:
        """The slot for (view, seq), or None."""
        return self._slots.get((view, seq))

    def keys(self) -> list[tuple[int, int]]:
        """The (view, seq) of every slot held."""
        return list(self._slots)

    def add_prepare(self, p: Prepare, view: int, n: int, in_window: bool) -> Optional[Slot]:
        """A backup's prepare for the current ``view`` or a few ahead (of ``n`` replicas),
        for a sequence number ``in_window``: its slot, or None when refused."""
        v = p.view
        if p.sender in (self._index, v % n) or not in_window or not view <= v <= view + n + 2:
            return None
        slot = self.slot(v, p.seq)
        slot.prepares.setdefault(p.sender, p)
        return slot

    def add_commit(self, c: Commit, view: int, n: int, in_window: bool) -> Optional[Slot]:
        """A peer's commit (an earlier view's only into a slot still held): its slot, or None."""
        v = c.view
        if c.sender == self._index or v > view + n + 2 or not in_window:
            return None
        slot = self._slots.get((v, c.seq)) if v < view else self.slot(v, c.seq)
        if slot is not None:
            slot.commits.setdefault(c.sender, c)
        return slot

    # ------------------------------------------------------------------ this replica's votes

    def propose(self, view: int, seq: int, req: Request) -> Slot:
        """As primary of ``view``: pre-prepare ``req`` at ``seq`` and broadcast it."""
        pp = self._outbox.sign(PrePrepare(view, seq, req.digest, req, self._index))
        self.keep_body(seq, req)
        slot = self.slot(view, seq)
        slot.pp = pp
        self._outbox.broadcast(pp)
        return slot

    def accept(self, pp: PrePrepare) -> Slot:
        """Accept the pre-prepare ``pp`` in its slot and, as a backup, broadcast a prepare."""
        slot = self.slot(pp.view, pp.seq)
        slot.pp = pp
        if pp.request is not None:
            self.keep_body(pp.seq, pp.request)
        if pp.sender != self._index and self._index not in slot.prepares:
            p = self._outbox.sign(Prepare(pp.view, pp.seq, pp.digest, self._index))
            slot.prepares[self._index] = p
            self._outbox.broadcast(p)
        return slot

    def commit(self, view: int, seq: int, slot: Slot) -> None:
        """The slot prepared in the current view: broadcast this replica's commit once."""
        if not slot.sent_commit:
            slot.sent_commit = True
            c = self._outbox.sign(Commit(view, seq, slot.pp.digest, self._index))
            slot.commits[self._index] = c
            self._outbox.broadcast(c)

    def ordered(self, digest: str, view: int) -> bool:
        """A pre-prepare of ``view`` held here orders the request with ``digest``."""
        return any(s.pp is not None and s.pp.digest == digest for (v, _q), s in self._slots.items() if v == view)

    def of_view(self, view: int) -> list[tuple[int, Slot]]:
        """(seq, slot) of ``view`` in sequence order: a snapshot, safe to act on."""
        return [(s, slot) for (v, s), slot in sorted(self._slots.items()) if v == view]

    # ------------------------------------------------------------------ request bodies

    def keep_body(self, seq: int, req: Request) -> None:
        """Remember the body of ``req``, ordered at ``seq``, until a checkpoint passes it."""
        cur = self._bodies.get(req.digest)
        if cur is None or cur[0] < seq:
            self._bodies[req.digest] = (seq, req)

    def bodies_held(self) -> int:
        return len(self._bodies)

    def body(self, digest: str) -> Optional[Request]:
        """The request with ``digest`` if a pre-prepare here carried it (or it was fetched)."""
        found = self._bodies.get(digest)
        return found[1] if found is not None else None

    # ------------------------------------------------------------------ prepared certificates

    def prepared(self, view: int, seq: int, slot: Slot, threshold: int, keep: int) -> bool:
        """Whether ``slot`` (at ``view``, ``seq``) is prepared: its pre-prepare and
        ``threshold`` matching prepares from backups. The first time, remember the
        prepared certificate with the first ``keep`` prepares by sender (the highest
        view's certificate per sequence number wins)."""
        if slot.prepared:
            return True
        backups = slot.matching_prepares()
        if len(backups) < threshold:
            return False
        slot.prepared = True
        cur = self._prepared.get(seq)
        if cur is None or cur.pre_prepare.view < view:
            backups.sort(key=lambda p: p.sender)
            pp = slot.pp if slot.pp.request is None else dataclasses.replace(slot.pp, request=None)
            self._prepared[seq] = PreparedCert(pp, tuple(backups[:keep]))  # by digest: small
        return True

    def prepared_above(self, seq: int) -> tuple[PreparedCert, ...]:
        """The P set of a view-change: certificates above ``seq``, in sequence order."""
        return tuple(self._prepared[s] for s in sorted(self._prepared) if s > seq)

    def prepared_seqs(self) -> list[int]:
        return list(self._prepared)

    # ------------------------------------------------------------------ future pre-prepares

    def buffer(self, pp: PrePrepare) -> None:
        """Keep a pre-prepare for a view this replica has not entered (first one wins)."""
        self._future.setdefault((pp.view, pp.seq), pp)

    def buffered_up_to(self, view: int) -> list[tuple[int, int]]:
        """Keys (view, seq) of buffered pre-prepares of views up to ``view``, sorted."""
        return sorted(k for k in self._future if k[0] <= view)

    def take_buffered(self, key: tuple[int, int]) -> PrePrepare | None:
        """Remove and return a buffered pre-prepare; None if a checkpoint truncated it meanwhile."""
        return self._future.pop(key, None)

    # ------------------------------------------------------------------ truncation

    def truncate(self, stable_seq: int) -> None:
        """Checkpoint ``stable_seq`` is stable: drop everything at or below it."""
        self._slots = {k: v for k, v in self._slots.items() if k[1] > stable_seq}
        self._prepared = {q: c for q, c in self._prepared.items() if q > stable_seq}
        self._future = {k: v for k, v in self._future.items() if k[1] > stable_seq}
        self._bodies = {d: b for d, b in self._bodies.items() if b[0] > stable_seq}

    def drop_views_below(self, view: int) -> None:
        """A new view was installed: slots of earlier views are done with."""
        self._slots = {k: s for k, s in self._slots.items() if k[0] >= view}
