"""Fetching request bodies by digest (Castro & Liskov, OSDI 1999, sections 4.2 and 4.4;
the TOCS 2002 article, section 5.2, has view changes carry digests and replicas fetch
the requests they lack).

A pre-prepare carries its request in the normal case, but the prepared certificates of a
VIEW-CHANGE and the pre-prepares of a NEW-VIEW name requests by digest only (the digest
is what is signed), so a view change stays small however large the requests. A replica
that must execute a sequence number whose body it lacks asks f+1 peers at a time
(another f+1 on each heartbeat, so a correct one holding it is reached) with
``RequestFetch(digest, seq)``; an answer counts only if its request has that digest.
:class:`RequestBodies` owns the digests being fetched; the bodies themselves are kept
by the :class:`~.slots.SlotLog` (with the pre-prepares) and the execution log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from .execution import ExecutionLog
from .messages import NULL_DIGEST, PrePrepare, Request, RequestBody, RequestFetch
from .outbox import Outbox
from .slots import SlotLog

__all__ = ["RequestBodies"]


class RequestBodies:
    """The bodies replica ``index`` of ``n`` (tolerating ``f`` faults) fetches through
    ``outbox``, looked up in ``slots`` and ``execution``; a fetched one is kept in
    ``slots``, handed to ``execution``, and ``resume()`` runs what became ready."""

    def __init__(
        self, outbox: Outbox, index: int, n: int, f: int, slots: SlotLog, execution: ExecutionLog,
        resume: Callable[[], None],
    ) -> None:
        self._outbox = outbox
        self._index = index
        self._peers = [p for p in range(n) if p != index]
        self._f = f
        self._slots = slots
        self._ex = execution
        self._resume = resume
        self._wanted: dict[str, tuple[int, int]] = {}  # digest -> (seq, peers asked so far)
        self._answered: set[tuple[int, str]] = set()  # (peer, digest) since the last heartbeat

    def of(self, seq: int, pp: PrePrepare) -> Optional[Request]:
        """The request of ``pp`` (at ``seq``): carried, known, or asked for (None then,
        as for the null request)."""
        body = pp.request or self._slots.body(pp.digest)
        if body is None and pp.digest != NULL_DIGEST and pp.digest not in self._wanted:
            self._wanted[pp.digest] = (seq, 0)
            self._ask(pp.digest)
        return body

    def retry(self) -> None:
        """The heartbeat: ask the next peers for the bodies still missing (and executable)."""
        self._answered.clear()
        self._wanted = {d: w for d, w in self._wanted.items() if w[0] > self._ex.last_executed}
        for digest in list(self._wanted):
            self._ask(digest)

    def _ask(self, digest: str) -> None:
        seq, asked = self._wanted[digest]
        msg = self._outbox.sign(RequestFetch(digest, seq, self._index))
        for k in range(asked, asked + self._f + 1):
            self._outbox.send(self._peers[k % len(self._peers)], msg)
        self._wanted[digest] = (seq, asked + self._f + 1)

    def on_fetch(self, msg: RequestFetch) -> None:
        """A peer asks for a body: answer when this replica holds it, once per heartbeat
        (a body may be 24 MiB: repeated fetches must not make this replica repeat it)."""
        if (msg.sender, msg.digest) in self._answered:
            return
        body = self._slots.body(msg.digest) or self._ex.body(msg.seq, msg.digest)
        if body is not None:
            self._answered.add((msg.sender, msg.digest))
            self._outbox.send(msg.sender, self._outbox.sign(RequestBody(body, self._index)))

    def on_body(self, msg: RequestBody) -> None:
        """A fetched body: taken only if this replica wants its digest."""
        req = msg.request
        ok = isinstance(req, Request) and isinstance(req.sig, bytes)
        wanted = self._wanted.pop(req.digest, None) if ok else None
        if wanted is not None:
            self._slots.keep_body(wanted[0], req)
            self._ex.fill(req)
            self._resume()

    def missing(self) -> list[str]:
        """The digests being fetched."""
        return list(self._wanted)
