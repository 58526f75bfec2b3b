"""In-order execution of committed requests (Castro & Liskov, OSDI 1999, section 4.2).

A replica executes the request of sequence number n once it is committed-local and
every request below n executed. :class:`ExecutionLog` owns the committed entries waiting
for their turn, the executed entries above the stable checkpoint (each with its commit
quorum certificate; the log below it is dropped, section 4.3), the at-most-once record
of executed (client, rid) keys (:mod:`.dedup`), which turns a re-ordered request into a
no-op (section 4.1), and the state digest: a hash chain over every executed (seq,
digest), which the checkpoints of section 4.3 sign.

It also takes certified entries from a peer or an external state transfer
(:meth:`ExecutionLog.take_certified`): an entry whose commit quorum certificate verifies
needs no trust in whoever sent it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

from ..crypto import sha256_hex
from .dedup import ClientTable, Snapshot
from .messages import GENESIS_DIGEST, NULL_DIGEST, CommittedEntry, Request
from .outputs import Committed
from .quorum import QuorumCertificate, entry_matches, verify

__all__ = ["ExecutionLog"]


class ExecutionLog:
    """Committed entries waiting for their turn, and those executed above the stable
    checkpoint; ``window`` and ``max_clients`` bound the at-most-once record (defaults
    64 and 1024, see :class:`~.dedup.ClientTable`)."""

    def __init__(self, window: int = 64, max_clients: int = 1024) -> None:
        self.last_executed = 0
        self.state_digest = GENESIS_DIGEST
        self.clients = ClientTable(window, max_clients)
        self._log: dict[int, Committed] = {}
        self._floor = 0  # the log is truncated up to here
        self._ready: dict[int, tuple[int, str, Optional[Request], QuorumCertificate]] = {}

    def executed(self, key: tuple[str, int]) -> bool:
        """The request with this (client, rid) already executed."""
        return self.clients.executed(key)

    def ready(self, seq: int, view: int, digest: str, request: Optional[Request], cert: QuorumCertificate) -> bool:
        """``seq`` committed: queue it for execution unless executed or queued already.
        ``request`` None for a digest other than the null one: the body is still missing."""
        if seq > self.last_executed and seq not in self._ready:
            self._ready[seq] = (view, digest, request, cert)
            return True
        return False

    def fill(self, req: Request) -> None:
        """A missing body arrived: the queued entries with its digest have it now."""
        for s, (v, d, r, cert) in list(self._ready.items()):
            if r is None and d == req.digest:
                self._ready[s] = (v, d, req, cert)

    def body(self, seq: int, digest: str) -> Optional[Request]:
        """The body of ``digest`` if held at ``seq`` (executed or queued), else None."""
        done = self._log.get(seq)
        queued = self._ready.get(seq)
        for req in (done.request if done else None, queued[2] if queued else None):
            if req is not None and req.digest == digest:
                return req
        return None

    def execute_next(self) -> Optional[Committed]:
        """Execute the next sequence number when it is ready (with its body); else None."""
        s = self.last_executed + 1
        queued = self._ready.get(s)
        if queued is None or (queued[2] is None and queued[1] != NULL_DIGEST):
            return None
        v, d, req, cert = self._ready.pop(s)
        noop = req is None or self.clients.executed(req.key)
        if not noop:
            self.clients.record(req.key, s)
        self.state_digest = sha256_hex(f"{self.state_digest}|{s}|{d}".encode())
        entry = Committed(s, v, d, req, noop, cert)
        if s > self._floor:  # executed after its checkpoint became stable: not kept
            self._log[s] = entry
        self.last_executed = s
        return entry

    def truncate(self, seq: int) -> None:
        """Checkpoint ``seq`` is stable: forget the executed entries up to it."""
        self._floor = max(self._floor, seq)
        self._log = {s: e for s, e in self._log.items() if s > seq}

    def jump(self, seq: int, state_digest: str, clients: Snapshot) -> None:
        """State transfer: the state is now that of checkpoint ``seq``."""
        self.last_executed, self.state_digest, self._floor = seq, state_digest, max(self._floor, seq)
        self.clients = ClientTable(self.clients.window, self.clients.max_clients, clients)
        self._log = {}
        self._ready = {s: r for s, r in self._ready.items() if s > seq}

    def held(self) -> int:
        """Executed entries held (for catch-up)."""
        return len(self._log)

    def take_certified(self, entries: Iterable[CommittedEntry], keys: Sequence[str], limit: int) -> None:
        """Queue each entry above the last executed one (up to ``limit``) whose commit
        quorum certificate is for it and verifies under ``keys``; drop the rest."""
        for e in entries:
            if not isinstance(e, CommittedEntry) or not self.last_executed < e.seq <= limit:
                continue
            queued = self._ready.get(e.seq)
            if queued is not None and (queued[2] is not None or queued[1] == NULL_DIGEST):
                continue  # queued with its body already
            cert = e.certificate
            if not isinstance(cert, QuorumCertificate) or not entry_matches(cert, e.seq, e.request):
                continue
            if not verify(cert, keys):
                continue
            self._ready[e.seq] = (cert.view, cert.digest, e.request, cert)

    def committed(self) -> list[Committed]:
        """The executed entries still held (above the stable checkpoint), in order."""
        return list(self._log.values())

    def entries(self, after: int = 0, end: Optional[int] = None) -> tuple[CommittedEntry, ...]:
        """Held executed entries ``after + 1 .. end`` in the self-certifying catch-up form."""
        top = self.last_executed if end is None else end
        return tuple(
            CommittedEntry(c.seq, c.request, c.certificate) for s, c in self._log.items() if after < s <= top
        )
