"""At-most-once execution in bounded memory (Castro & Liskov, OSDI 1999, sections 4.1 and 4.3).

The paper keeps, per client, the timestamp of the last reply as part of the service state,
so it survives log truncation and travels with a state transfer. :class:`ClientTable` is
that record for (client, rid) keys whose rids may execute out of order (one client may
have several requests in flight): per client the highest rid executed, the rids missing
below it within ``window`` (the *gaps*), and the sequence number of its last execution.
A rid is *executed* when it is at most the highest and not a gap; rids more than
``window`` below the highest count as executed (too old to order again). At most
``max_clients`` clients are kept: the one whose last execution is oldest goes first
(node client ids are per-boot, so old ones stop appearing).

The table changes only when a request executes, so it is the same at every correct
replica after the same sequence number; its :func:`table_digest` at a checkpoint is
signed in the CHECKPOINT message and the table itself rides with the stable checkpoint.
"""

from __future__ import annotations

from ..crypto import sha256_hex
from .messages import canonical

__all__ = ["ClientTable", "Snapshot", "table_digest"]

#: ((client, highest rid, gaps ascending, seq of last execution), ...) sorted by client.
Snapshot = tuple[tuple[str, int, tuple[int, ...], int], ...]


def table_digest(snapshot: Snapshot) -> str:
    """SHA-256 of the canonical encoding of a snapshot."""
    return sha256_hex(canonical(snapshot))


class ClientTable:
    """Executed (client, rid) keys; ``window`` gaps per client (default 64), at most
    ``max_clients`` clients (default 1024), starting from ``snapshot`` (default empty)."""

    def __init__(self, window: int = 64, max_clients: int = 1024, snapshot: Snapshot = ()) -> None:
        self.window = window
        self.max_clients = max_clients
        self._clients: dict[str, tuple[int, frozenset[int], int]] = {
            c: (top, frozenset(gaps), seq) for c, top, gaps, seq in snapshot
        }

    def __len__(self) -> int:
        return len(self._clients)

    def executed(self, key: tuple[str, int]) -> bool:
        rec = self._clients.get(key[0])
        return rec is not None and key[1] <= rec[0] and key[1] not in rec[1]

    def record(self, key: tuple[str, int], seq: int) -> None:
        """``key`` executed at ``seq`` (callers check :meth:`executed` first)."""
        client, rid = key
        rec = self._clients.get(client)
        if rec is None:
            # Lower rids of a new client may still be in flight: they are gaps.
            top, gaps = rid, frozenset(range(max(0, rid - self.window + 1), rid))
        elif rid > rec[0]:  # only the window below the new top can hold gaps (a huge jump)
            top, gaps = rid, rec[1] | frozenset(range(max(rec[0] + 1, rid - self.window + 1), rid))
        else:
            top, gaps = rec[0], rec[1] - {rid}
        self._clients[client] = (top, frozenset(g for g in gaps if g > top - self.window), seq)
        if len(self._clients) > self.max_clients:
            oldest = min(self._clients, key=lambda c: (self._clients[c][2], c))
            del self._clients[oldest]

    def snapshot(self) -> Snapshot:
        return tuple(
            (c, top, tuple(sorted(gaps)), seq) for c, (top, gaps, seq) in sorted(self._clients.items())
        )
