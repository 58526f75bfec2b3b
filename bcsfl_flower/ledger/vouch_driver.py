"""A ledger node's vouches (:mod:`.vouch`) on its event loop: sent in batches, received, used.

The node calls :meth:`VouchDriver.verified` with the transactions it admitted from a
client (their signatures just checked; it also sends them to the replicas that must
vouch for them too, :func:`~.vouch.helpers`), :meth:`VouchDriver.receive` with a peer's
``vouch`` APP message, :meth:`VouchDriver.check` with a peer's ``check`` message (verify
these, vouch for the valid ones), and :meth:`VouchDriver.before_execute` with each batch
block before it executes it. Vouches go out when :data:`~.vouch.MAX_DIGESTS` are queued or
``delay`` seconds after the first one was, so a quiet client's transaction is vouched
for long before its block executes, and a busy node signs one vouch per thousands.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from bcsfl_flower.crypto import SigningKey, check_signature_hex, remember_valid

from .block import Block, LedgerError, Transaction
from .rules import check_transaction
from .vouch import MAX_CHECK_TXS, VouchBook, VouchOutbox, helpers, read_vouch, triple_digest

__all__ = ["VouchDriver", "VouchWait"]


@dataclass
class VouchWait:
    """One admitted request's transactions whose vouches from the asked replicas are still due.

    ``future`` is done once every asked replica vouched for every one of ``digests``.
    """

    digests: list[bytes]
    remaining: int
    future: asyncio.Future[None]


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
    primary : Callable[[], int] | None (default: None)
        The primary of the node's current view (None: the node never asks for checks).
    connected : Callable[[], Iterable[int]] | None (default: None)
        The peers reachable now: a check goes to an unreachable one only when no other will do.
    delay : float (default: 0.005)
        Seconds a queued digest waits for more before its vouch goes out.
    """

    def __init__(self, index: int, key: SigningKey, keys: Sequence[str],
                 send: Callable[[int, dict[str, Any]], None], primary: Callable[[], int] | None = None,
                 connected: Callable[[], Iterable[int]] | None = None, delay: float = 0.005) -> None:
        self.index, self.keys, self.send, self.delay = index, tuple(keys), send, delay
        self.primary, self.connected = primary, connected
        self.outbox = VouchOutbox(index, key)
        self.book = VouchBook(keys)
        self._timer: asyncio.TimerHandle | None = None
        # digests this node asked peers to vouch for: (bit mask of those still due, the request's future)
        self._awaited: dict[bytes, tuple[int, VouchWait]] = {}
        self.stats = {"vouches_sent": 0, "vouches_received": 0, "vouches_refused": 0, "txs_trusted": 0,
                      "checks_sent": 0, "txs_checked": 0}

    def verified(self, txs: Iterable[Transaction]) -> VouchWait | None:
        """Vouch for the client transactions this node just admitted whose signatures are valid,
        and ask the replicas :func:`~.vouch.helpers` names to verify and vouch for them too.

        Each is checked again through the memo (an answer remembered on arrival costs
        nothing), so only what this node verified is vouched for, enrolments included.
        Returns None when no replica was asked, else a :class:`VouchWait` whose future is
        done once every asked replica vouched for every valid transaction: a primary that
        waits for it (a while) before it batches them puts them in a block its peers
        already hold the vouches for (a vouch arriving after the block only means a peer
        verifies itself). :meth:`forget` it when done waiting.
        """
        valid = [tx for tx in txs if check_signature_hex(tx.public, tx.sign, tx.hash)]
        digests = [triple_digest(tx.public, tx.sign, tx.hash) for tx in valid]
        self._vouch(digests)
        if not (self.primary and valid):
            return None
        n = len(self.keys)
        down = set(range(n)) - set(self.connected()) if self.connected else set()
        asked = helpers(n, self.index, self.primary(), down)
        if not asked:
            return None
        for start in range(0, len(valid), MAX_CHECK_TXS):
            msg = {"type": "check", "txs": [tx.to_json() for tx in valid[start:start + MAX_CHECK_TXS]]}
            for peer in asked:
                self.stats["checks_sent"] += 1
                self.send(peer, msg)
        return self._await(digests, sum(1 << peer for peer in asked))

    def forget(self, wait: VouchWait) -> None:
        """Stop watching for the vouches ``wait`` still lacks (it timed out, say)."""
        for digest in wait.digests:
            entry = self._awaited.get(digest)
            if entry is not None and entry[1] is wait:
                del self._awaited[digest]

    def check(self, obj: dict[str, Any]) -> None:
        """Verify the transactions of a peer's ``check`` message; vouch for the valid ones at once.

        Any replica may ask (a correct one asks only when its primary's block and its own
        vouch are not f+1); at most :data:`~.vouch.MAX_CHECK_TXS` per message are read,
        and anything malformed or badly signed is skipped: no vouch, and the executing
        nodes verify it themselves.
        """
        txs = obj.get("txs")
        if not isinstance(txs, list):
            return
        digests = []
        for item in txs[:MAX_CHECK_TXS]:
            try:
                tx = Transaction.from_json(item, copy=False)
                check_transaction(tx)
            except LedgerError:
                continue
            digests.append(triple_digest(tx.public, tx.sign, tx.hash))
        self.stats["txs_checked"] += len(digests)
        self._send(self.outbox.add(digests))
        self.flush()  # the asking node waits for it

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
        voucher, digests = got
        for digest in digests:
            entry = self._awaited.get(digest)
            if entry is not None and entry[0] >> voucher & 1:
                self._vouched_for(digest, entry[0] & ~(1 << voucher), entry[1])

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

    def _await(self, digests: list[bytes], mask: int) -> VouchWait:
        wait = VouchWait(digests, len(digests), asyncio.get_running_loop().create_future())
        for digest in digests:
            self._awaited[digest] = (mask, wait)
        return wait

    def _vouched_for(self, digest: bytes, still: int, wait: VouchWait) -> None:
        if still:
            self._awaited[digest] = (still, wait)
            return
        del self._awaited[digest]
        wait.remaining -= 1
        if wait.remaining == 0 and not wait.future.done():
            wait.future.set_result(None)

    def _vouch(self, digests: Iterable[bytes]) -> None:
        self._send(self.outbox.add(digests))
        if self.outbox.pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def _send(self, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            self.stats["vouches_sent"] += 1
            for peer in range(len(self.keys)):
                if peer != self.index:
                    self.send(peer, msg)
