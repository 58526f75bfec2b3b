"""Size bounds of the PBFT messages, per type (Castro & Liskov, OSDI 1999, section 4;
the message kinds of :mod:`.messages`).

No message may grow with the log or with the number of requests in flight: a request
is at most ``PBFTConfig.max_request_bytes``, only the messages that carry one request
(pre-prepare, forward, request body, a catch-up entry) are that large, and the view
change (section 4.4) names prepared requests by digest, so a NEW-VIEW grows with n and
the log window L only. :func:`message_bounds` is the table, by message tag; the replica
never sends a message over its bound (:class:`~.outbox.Outbox`), and a ledger node's
wire decoder refuses a frame over its type's bound before parsing it.
"""

from __future__ import annotations

from .quorum import max_faulty
from .state import PBFTConfig

__all__ = ["MAX_APP_DIGEST", "MAX_CLIENT_ID", "SMALL", "message_bounds"]

#: Bound of a small fixed-shape message (prepare, commit, status, fetch): ids, a view and
#: sequence number, one or two 64-character digests and a 64-byte signature, with room.
SMALL = 1024
#: Longest client id a request may carry (the at-most-once record keeps it).
MAX_CLIENT_ID = 256
#: Longest application digest a driver may sign into a checkpoint.
MAX_APP_DIGEST = 512


def message_bounds(config: PBFTConfig, n: int) -> dict[str, int]:
    """Largest encoded size, in bytes, of each message type (by ``TAG``) that replicas
    of ``n`` with ``config`` exchange."""
    f = max_faulty(n)
    quorum, window = 2 * f + 1, config.log_window
    request = config.max_request_bytes
    checkpoint = SMALL + MAX_APP_DIGEST
    prepared = SMALL + 2 * f * SMALL  # a pre-prepare without its request, 2f prepares
    view_change = SMALL + quorum * checkpoint + window * prepared
    qc = SMALL + quorum * SMALL
    entry = request + qc + SMALL
    client = MAX_CLIENT_ID + 64 + 24 * config.dedup_window
    return {
        "request": request,
        "pre-prepare": request + SMALL,
        "forward": request + SMALL,
        "request-body": request + SMALL,
        "prepare": SMALL,
        "commit": SMALL,
        "status": SMALL,
        "request-fetch": SMALL,
        "checkpoint": checkpoint,
        "prepared": prepared,
        "qc": qc,
        "entry": entry,
        "catch-up": max(config.catchup_bytes, entry) + SMALL,
        "view-change": view_change,
        "new-view": SMALL + quorum * view_change + window * SMALL,
        "state-proof": SMALL + quorum * checkpoint + config.dedup_clients * client,
    }
