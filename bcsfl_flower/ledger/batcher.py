"""Transaction batching: many signed transactions per block, one PBFT instance per block.

Every node accepts signed transactions from clients (after checking each one, see
:mod:`~.service`) and forwards them to the primary of its current view. The primary
pools them and, while fewer than ``max_inflight`` of its blocks are in flight, builds
the next block of up to ``batch_size`` transactions on top of its newest in-flight
block (or the chain head), signs it with its node key and submits it as one request.

Every node then executes that block with ``Ledger.append``: each transaction's hash and
Ed25519 signature is verified by every node before the block is written, and the
federation's rules admit each one (an enrolment signed by the enrolment authority, any
other transaction signed by an enrolled key). A block that fails (a stale parent after
a view change, a bad transaction that a faulty node forwarded, two enrolments of one id
with different keys) is rejected on every node alike; the primary then re-checks its
transactions one by one, drops the bad ones and proposes the rest again.

Two blocks holding the same transaction can both commit only if one was built on top
of the other; the primary skips transactions that are committed or already in its
in-flight blocks, so a correct primary never duplicates one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .block import Block, LedgerError, Transaction, build_block
from .ops import Op, encode_block_op
from .replay import admissible
from .rules import check_transaction

if TYPE_CHECKING:  # pragma: no cover
    from .node import LedgerNode

__all__ = ["Batcher", "TxWait"]

_MAX_HOPS = 3
_REMEMBER = 1_000_000  # committed transaction ids kept for de-duplication
_OUTSTANDING_TTL = 120.0


class TxWait:
    """Clients waiting for a set of transaction ids to commit."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.remaining = set(ids)
        self.where: dict[str, int] = {}
        self.future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()

    def done(self, tx_id: str, seq: int) -> None:
        """``tx_id`` committed in block ``seq``."""
        if tx_id in self.remaining:
            self.remaining.discard(tx_id)
            self.where[tx_id] = seq
            if not self.remaining and not self.future.done():
                self.future.set_result(self.where)


class Batcher:
    """The transaction pool of one node (the primary's pool builds blocks).

    Parameters
    ----------
    node : LedgerNode
        The node whose replica, key and ledger the batcher uses.
    """

    def __init__(self, node: LedgerNode) -> None:
        self.node = node
        self.pool: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.proposed: dict[str, list[dict[str, Any]]] = {}
        self.inflight_ids: set[str] = set()
        self.head: Block | None = None
        self.committed: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> block
        self.outstanding: dict[str, tuple[dict[str, Any], float]] = {}
        self.waits: dict[str, list[TxWait]] = {}
        self._build_handle: asyncio.TimerHandle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ intake
    def add(self, txs: list[Any], hops: int = 0, from_client: bool = False) -> None:
        """Take transactions (JSON objects) from a client or a forwarding peer.

        Parameters
        ----------
        txs : list[Any]
            Transactions in their JSON form; a client's were already checked.
        hops : int (default: 0)
            How often they were forwarded (dropped after a few, to stop loops).
        from_client : bool (default: False)
            Whether this node is their entry point (it re-forwards them until they
            commit, so a primary that fails cannot lose them).
        """
        now = time.monotonic()
        fresh = [tx for tx in txs if isinstance(tx, dict) and isinstance(tx.get("id"), str)
                 and tx["id"] not in self.committed]
        if from_client:
            for tx in fresh:
                self.outstanding[tx["id"]] = (tx, now)
            self._arm_retry()
        self._route(fresh, hops)

    def _route(self, txs: list[dict[str, Any]], hops: int) -> None:
        node = self.node
        target = node.replica.primary
        if node.is_primary or target == node.index:
            for tx in txs:
                if tx["id"] not in self.inflight_ids:
                    self.pool.setdefault(tx["id"], tx)
            self._schedule()
        elif txs and hops < _MAX_HOPS:
            node.send_app(target, {"type": "txs", "txs": txs, "hops": hops + 1})

    def wait(self, ids: Sequence[str]) -> TxWait:
        """Register interest in transaction ids; ``.future`` resolves when all commit."""
        wait = TxWait(ids)
        for tx_id in ids:
            if tx_id in self.committed:  # a client re-sending what already committed
                wait.done(tx_id, self.committed[tx_id])
            else:
                self.waits.setdefault(tx_id, []).append(wait)
        return wait

    def forget(self, wait: TxWait) -> None:
        """Drop a wait registered with :meth:`wait` (answered or timed out)."""
        for tx_id in wait.remaining:
            waits = self.waits.get(tx_id)
            if waits is not None and wait in waits:
                waits.remove(wait)
                if not waits:
                    del self.waits[tx_id]

    # ------------------------------------------------------------------ events
    def on_view(self) -> None:
        """The view changed or recovery ended: lead, or hand the pool to the leader."""
        node = self.node
        waiting = [tx for tx, _ in self.outstanding.values()
                   if tx["id"] not in self.committed and tx["id"] not in self.pool]
        if waiting:
            self._route(waiting, 0)  # the clients' transactions go to the new primary
        if node.is_primary:
            self.head = None
            for txs in self.proposed.values():
                for tx in txs:
                    if tx["id"] not in self.committed:
                        self.pool.setdefault(tx["id"], tx)
            self.proposed.clear()
            self.inflight_ids.clear()
            self._schedule(0.0)
        elif self.pool and node.replica.primary != node.index:
            txs = list(self.pool.values())
            self.pool.clear()
            self._route(txs, 0)

    def on_executed(self, block: Block, ok: bool, ids: list[Any]) -> None:
        """A block was executed on this node (``ok``: appended or already held)."""
        if ok:
            for tx_id in ids:
                if isinstance(tx_id, str):
                    for wait in self.waits.pop(tx_id, ()):
                        wait.done(tx_id, block.sequence_no)
                    self.committed[tx_id] = block.sequence_no
                    self.outstanding.pop(tx_id, None)
                    self.pool.pop(tx_id, None)
            while len(self.committed) > _REMEMBER:
                self.committed.popitem(last=False)
        txs = self.proposed.pop(block.hash, None)
        if txs is not None:
            self.inflight_ids.difference_update(tx["id"] for tx in txs)
            if self.head is not None and self.head.hash == block.hash:
                self.head = None
            if not ok:
                self.head = None  # blocks built on this one are doomed too
                self._requeue(txs)
        if self.pool:
            self._schedule(0.0)

    def _requeue(self, txs: list[dict[str, Any]]) -> None:
        """Put back a rejected block's transactions, dropping those that are invalid.

        Only a faulty forwarder's transactions (or conflicting enrolments) fail here:
        this node checked its clients' transactions on arrival.
        """
        ledger = self.node.ledger
        back: list[tuple[str, dict[str, Any]]] = []
        for tx in txs:
            if tx["id"] in self.committed:
                continue
            try:
                parsed = Transaction.from_json(tx)
                check_transaction(parsed)
            except LedgerError:
                continue
            model = parsed.data.get("model-params")
            if model is not None and not ledger.has_model(model):
                continue
            back.append((tx["id"], tx))
        kept = admissible(self.node.chain.state, (tx for _, tx in back))  # the rules, in order
        back = [(tx["id"], tx) for tx in kept]
        ids = {k for k, _ in back}
        self.pool = collections.OrderedDict(back + [kv for kv in self.pool.items() if kv[0] not in ids])

    # ------------------------------------------------------------------ building
    def _schedule(self, delay: float | None = None) -> None:
        if self._build_handle is not None:
            return
        wait = self.node.cfg.batch_delay if delay is None else delay
        loop = asyncio.get_running_loop()
        self._build_handle = loop.call_later(wait, self._build)

    def _build(self) -> None:
        self._build_handle = None
        node = self.node
        if not node.is_primary:
            if self.pool and node.replica.primary != node.index:
                self.on_view()
            return
        cfg = node.cfg
        while self.pool and len(self.proposed) < cfg.max_inflight:
            batch: list[dict[str, Any]] = []
            while self.pool and len(batch) < cfg.batch_size:
                tx_id, tx = self.pool.popitem(last=False)
                if tx_id not in self.committed and tx_id not in self.inflight_ids:
                    batch.append(tx)
            if not batch:
                break
            prev = self.head if self.head is not None else node.chain.head
            try:
                block = build_block(prev, {"transactions": batch}, node.key, copy=False)
            except LedgerError:
                continue  # not JSON-serialisable: a faulty forwarder's garbage
            self.proposed[block.hash] = batch
            self.inflight_ids.update(tx["id"] for tx in batch)
            self.head = block
            node.stats["blocks_built"] += 1
            value = encode_block_op(block)
            node.remember(value, Op("block", block=block))  # no need to parse our own block
            node.submit(value, track=False)

    # ------------------------------------------------------------------ retries
    def _arm_retry(self) -> None:
        if self._retry_handle is None:
            cfg = self.node.cfg
            loop = asyncio.get_running_loop()
            self._retry_handle = loop.call_later(min(cfg.request_timeout, cfg.tx_retry) / 2,
                                                 self._retry)

    def _retry(self) -> None:
        """Watch client transactions that have not committed yet.

        After ``request_timeout`` the node pings the primary through PBFT (a view change
        replaces a primary that does not order it); after ``tx_retry`` it forwards them
        again (a primary may have dropped them).
        """
        self._retry_handle = None
        node, now = self.node, time.monotonic()
        stale = [k for k, (_, t) in self.outstanding.items() if now - t > _OUTSTANDING_TTL]
        for key in stale:
            del self.outstanding[key]
        oldest = min((t for _, t in self.outstanding.values()), default=now)
        if now - oldest > node.cfg.request_timeout:
            node.ping()
        due = [tx for tx, t in self.outstanding.values()
               if now - t > node.cfg.tx_retry and tx["id"] not in self.committed
               and tx["id"] not in self.inflight_ids and tx["id"] not in self.pool]
        if due:
            for tx in due:
                self.outstanding[tx["id"]] = (tx, now)
            self._route(due, 0)
        if self.outstanding:
            self._arm_retry()

    def close(self) -> None:
        """Cancel pending timers."""
        for handle in (self._build_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
