"""Client requests a replica waits on (Castro & Liskov, OSDI 1999, sections 4.1 and 4.4).

A replica that received a valid request it has not executed is *waiting* for it: a
backup relays it to the primary (section 4.1) and keeps its request timer running while
it waits (section 4.4); the primary assigns it the next sequence number.
:class:`RequestQueue` owns the pending requests by (client, rid), the sequence number
each was given in the current view (one request is ordered at most once per view), and
the primary's last assigned sequence number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional

from .limits import MAX_CLIENT_ID
from .messages import Forward, Request, check_signature
from .outbox import Outbox
from .state import TimerKind

__all__ = ["RequestQueue", "request_ok"]

Key = tuple[str, int]


def request_ok(
    req: Request,
    client_keys: Optional[Mapping[str, str]],
    validate: Optional[Callable[[str], bool]],
    max_bytes: Optional[int] = None,
) -> bool:
    """``req`` is a request with a string value and a client id of at most
    :data:`~.limits.MAX_CLIENT_ID` characters, encoded in at most ``max_bytes`` (default
    None: any size), signed by its client when ``client_keys`` are given, whose value
    ``validate`` (when given) accepts; a crashing hook refuses."""
    if not isinstance(req, Request) or not isinstance(req.value, str) or not isinstance(req.client, str):
        return False
    if len(req.client) > MAX_CLIENT_ID or (max_bytes is not None and len(req.encoded()) > max_bytes):
        return False
    if client_keys is not None:
        pub = client_keys.get(req.client)
        if pub is None or not check_signature(pub, req.sig, req.body()):
            return False
    if validate is not None:
        try:
            return bool(validate(req.value))
        except Exception:  # noqa: BLE001 - a crashing hook counts as a refusal
            return False
    return True


class RequestQueue:
    """Pending requests of replica ``index``, their assignments in the current view, the
    next free number; the request timer and the relaying to the primary (when
    ``forward_requests``, default True) go through ``outbox``. ``client_keys``,
    ``validate`` and ``max_bytes`` (default None each) are :func:`request_ok`'s."""

    def __init__(
        self, outbox: Outbox, index: int, forward_requests: bool = True,
        client_keys: Optional[Mapping[str, str]] = None, validate: Optional[Callable[[str], bool]] = None,
        max_bytes: Optional[int] = None,
    ) -> None:
        self._outbox = outbox
        self._index = index
        self._forward_requests = forward_requests
        self._checks = (client_keys, validate, max_bytes)
        self._pending: dict[Key, Request] = {}
        self._assigned: dict[Key, int] = {}
        #: The primary's last assigned sequence number.
        self.next_seq = 0

    # ------------------------------------------------------------------ pending

    def ok(self, req: Request) -> bool:
        """:func:`request_ok` with this replica's checks."""
        return request_ok(req, *self._checks)

    def add(self, req: Request) -> None:
        """Wait for ``req`` (the first copy of a key is kept)."""
        self._pending.setdefault(req.key, req)

    def done(self, key: Key) -> bool:
        """``key`` executed: stop waiting; True when it was pending."""
        return self._pending.pop(key, None) is not None

    def find(self, digest: str) -> Optional[Request]:
        """The pending request with ``digest``, if any."""
        return next((r for r in self._pending.values() if r.digest == digest), None)

    def drop(self, executed: Callable[[Key], bool]) -> None:
        """Stop waiting for the requests that ``executed`` says ran (a state transfer)."""
        self._pending = {k: r for k, r in self._pending.items() if not executed(k)}

    def __bool__(self) -> bool:
        """Some request is pending."""
        return bool(self._pending)

    def pending(self) -> list[tuple[Key, Request]]:
        """The pending requests in arrival order (a snapshot)."""
        return list(self._pending.items())

    def forward(self, req: Request, primary: int) -> None:
        """A backup relays ``req`` to the ``primary`` (section 4.1)."""
        if self._forward_requests and primary != self._index:
            self._outbox.send(primary, self._outbox.sign(Forward(req, self._index)))

    def update_timer(self, backup: bool, timeout: float, restart: bool = False) -> None:
        """Keep the request timer running while this replica is a ``backup`` in a normal
        view waiting for a request (``restart``: from now on), else stop it (section 4.4)."""
        if not backup or not self._pending:
            self._outbox.cancel_timer(TimerKind.REQUEST)
        elif restart or not self._outbox.armed(TimerKind.REQUEST):
            self._outbox.set_timer(TimerKind.REQUEST, timeout)

    def stop_timer(self) -> None:
        self._outbox.cancel_timer(TimerKind.REQUEST)

    # ------------------------------------------------------------------ assignments

    def assignment(self, key: Key) -> Optional[int]:
        """The sequence number ``key`` was given in the current view, if any."""
        return self._assigned.get(key)

    def assigned(self) -> int:
        """How many assignments are held."""
        return len(self._assigned)

    def assign(self, key: Key, seq: int) -> None:
        self._assigned[key] = seq

    def assign_next(self, key: Key) -> int:
        """Primary: give ``key`` the next sequence number."""
        self.next_seq += 1
        self._assigned[key] = self.next_seq
        return self.next_seq

    def stable(self, seq: int, primary: bool) -> None:
        """Checkpoint ``seq`` is stable: forget the assignments up to it (they executed, and
        executed keys are never ordered again), so a long view does not grow them; as the
        ``primary``, the next assigned number is above ``seq``."""
        self._assigned = {k: s for k, s in self._assigned.items() if s > seq}
        if primary:
            self.next_seq = max(self.next_seq, seq)

    def new_view(self, next_seq: Optional[int] = None) -> None:
        """A new view starts: assignments of the previous one no longer bind; as its
        primary, the next assigned number is ``next_seq + 1``."""
        self._assigned = {}
        if next_seq is not None:
            self.next_seq = next_seq
