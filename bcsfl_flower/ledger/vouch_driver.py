"""A ledger node's vouches (:mod:`.vouch`) on its event loop: sent in batches, received, used.

The node calls :meth:`VouchDriver.verified` with the transactions it admitted from a
client (their signatures just checked), :meth:`VouchDriver.receive` with a peer's
``vouch`` APP message, and :meth:`VouchDriver.before_execute` with each batch block
before it executes it. Vouches go out when :data:`~.vouch.MAX_DIGESTS` are queued or
``delay`` seconds after the first one was, so a quiet client's transaction is vouched
for long before its block executes, and a busy node signs one vouch per thousands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from bcsfl_flower.crypto import SigningKey, check_signature_hex, remember_valid

from .block import Block, Transaction
from .vouch import VouchBook, VouchOutbox, read_vouch, triple_digest

__all__ = ["VouchDriver"]


class VouchDriver:
    """Sends, receives and applies vouches for one node.

    Parameters
    ----------
    index : int
        The node's replica index.
    key : SigningKey
        Its node key (signs its vouches).
    keys : Sequence[str]
        Every replica's public key, in index order.
    send : Callable[[int, dict], None]
        Sends an APP message to a peer.
    delay : float (default: 0.005)
        Seconds a queued digest waits for more before its vouch goes out.
    """

    def __init__(self, index: int, key: SigningKey, keys: Sequence[str],
                 send: Callable[[int, dict[str, Any]], None], delay: float = 0.005) -> None:
        self.index, self.keys, self.send, self.delay = index, tuple(keys), send, delay
        self.outbox = VouchOutbox(index, key)
        self.book = VouchBook(keys)
        self._timer: asyncio.TimerHandle | None = None
        self.stats = {"vouches_sent": 0, "vouches_received": 0, "vouches_refused": 0, "txs_trusted": 0}

    def verified(self, txs: Iterable[Transaction]) -> None:
        """Vouch for the client transactions this node just admitted whose signatures are valid.

        Each is checked again through the memo (an answer remembered on arrival costs
        nothing), so only what this node verified is vouched for, enrolments included.
        """
        self._send(self.outbox.add(triple_digest(tx.public, tx.sign, tx.hash) for tx in txs
                                   if check_signature_hex(tx.public, tx.sign, tx.hash)))
        if self.outbox.pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        """Send what is queued now."""
        self.close()
        self._send(self.outbox.flush())

    def receive(self, obj: dict[str, Any]) -> None:
        """Record a peer's vouch message, if it is signed by the replica it names."""
        got = read_vouch(obj, self.keys, self.index)
        if got is None:
            self.stats["vouches_refused"] += 1
            return
        self.stats["vouches_received"] += 1
        self.book.add(*got)

    def before_execute(self, block: Block) -> None:
        """Mark the transactions of ``block`` that f+1 replicas vouch for as verified."""
        for public, sign, digest in self.book.trusted(block):
            if remember_valid(public, sign, digest):
                self.stats["txs_trusted"] += 1

    def close(self) -> None:
        """Drop the pending timer (on a flush, or when the node stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send(self, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            self.stats["vouches_sent"] += 1
            for peer in range(len(self.keys)):
                if peer != self.index:
                    self.send(peer, msg)
