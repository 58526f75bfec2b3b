"""Transaction batching (sans-IO): many signed transactions per block, one PBFT instance per block.

The paper's ledger nodes (Sec. IV-C) record every client's update as a signed
transaction in a block that the nodes agree on with PBFT. Ordering each transaction on
its own would cost one PBFT instance per transaction, so the primary of the current
view batches them: every node accepts signed transactions from clients (after checking
each one, see :mod:`~.service`) and forwards them to the primary of its current view.
The primary pools them and, while fewer than ``max_inflight`` of its blocks are in
flight, builds the next block of up to ``batch_size`` transactions on top of its newest
in-flight block (or the chain head), signs it with its node key and proposes it as one
request.

Every node then executes that block with ``Ledger.append``: each transaction's hash is
checked by every node, and its Ed25519 signature verified by every node that does not
hold f+1 replicas' vouches for it (:mod:`.vouch`; the primary's block is one: it
verifies what it batches), before the block is written, and the
federation's rules admit each one (an enrolment signed by the enrolment authority, any
other transaction signed by an enrolled key). A block that fails (a stale parent after
a view change, a bad transaction that a faulty node forwarded, two enrolments of one id
with different keys) is rejected on every node alike; the primary then re-checks its
transactions one by one, drops the bad ones and proposes the rest again.

Exactly once: a transaction is on the chain at most once. Every node's SQLite file
records the id of each committed transaction with its block (:mod:`~.sqlite`), so a
block holding an id already on the chain is refused on every node, and the batcher
drops such a transaction before it is pooled or forwarded (:attr:`NodeFacts.committed`
reads the file, so this holds after a restart too). A client re-sending a transaction
that already committed is answered at once with its original block. The primary also
skips transactions already in its in-flight blocks, so it does not propose a block that
is bound to be refused.

Like the PBFT :class:`~bcsfl_flower.consensus.replica.Replica`, :class:`Batcher` does
no I/O and reads no clock: each event method takes what the node knows at that moment
(:class:`NodeFacts`) and, where time matters, ``now``, and returns the actions
(:data:`Action`) for its driver to carry out: forward transactions to a peer, propose a
block, order a ping, arm or disarm a timer, answer a waiting client. The node's asyncio
driver is :class:`~.batch_driver.BatchDriver`.
"""

from __future__ import annotations

import collections
from typing import Any

from bcsfl_flower.crypto import SigningKey, check_signature_hex

from .batch_actions import (
    Action, BatchConfig, BatchTimer, CancelTimer, ForwardTxs, NodeFacts, Ping, ProposeBlock,
    Resolve, SetTimer, TxWait,
)
from .block import Block, LedgerError, Transaction, build_block
from .replay import admissible
from .rules import check_transaction

__all__ = [
    "Action", "BatchConfig", "BatchTimer", "Batcher", "CancelTimer", "ForwardTxs",
    "NodeFacts", "Ping", "ProposeBlock", "Resolve", "SetTimer", "TxWait",
]

MAX_HOPS = 3  # forwarded transactions are dropped after this many hops (stops loops)
REMEMBER = 100_000  # recently committed ids kept in memory (the chain's file has them all)
OUTSTANDING_TTL = 120.0  # seconds a client's transaction is watched before it is given up


def _signature_ok(tx: dict[str, Any]) -> bool:
    """Whether ``tx`` carries a valid signature by its key over its declared hash."""
    return check_signature_hex(tx.get("public"), tx.get("sign"), tx.get("hash"))


class Batcher:
    """The transaction pool of one node (the primary's pool builds blocks).

    Parameters
    ----------
    index : int
        This node's replica index.
    key : SigningKey
        This node's key: it signs the blocks it builds as primary.
    config : BatchConfig | None (default: None)
        Tuning; ``None``: :class:`BatchConfig`'s defaults.
    """

    def __init__(self, index: int, key: SigningKey, config: BatchConfig | None = None) -> None:
        self.index = index
        self.key = key
        self.cfg = config or BatchConfig()
        self.pool: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.proposed: dict[str, list[dict[str, Any]]] = {}  # in-flight block hash -> its txs
        self.inflight_ids: set[str] = set()
        self.head: Block | None = None  # this node's newest in-flight block
        self.committed: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> block
        self.outstanding: dict[str, tuple[dict[str, Any], float]] = {}  # the clients' -> since
        self.waits: dict[str, list[TxWait]] = {}
        self.armed: set[BatchTimer] = set()
        # the ids :meth:`register` just found off the chain, and the head it read them at:
        # the :meth:`add` of the same request that follows need not ask the file again
        self._absent: tuple[str, set[str]] | None = None

    # ------------------------------------------------------------------ intake
    def add(self, txs: list[Any], *, facts: NodeFacts, now: float, hops: int = 0,
            from_client: bool = False) -> list[Action]:
        """Take transactions (JSON objects) from a client or a forwarding peer.

        Parameters
        ----------
        txs : list[Any]
            Transactions in their JSON form; a client's were already checked.
        facts : NodeFacts
            The node as it is now.
        now : float
            The time in seconds (any monotonic clock; the same for every call).
        hops : int (default: 0)
            How often they were forwarded (dropped after a few, to stop loops).
        from_client : bool (default: False)
            Whether this node is their entry point (it re-forwards them until they
            commit, so a primary that fails cannot lose them).
        """
        out: list[Action] = []
        fresh = [tx for tx in txs if isinstance(tx, dict) and isinstance(tx.get("id"), str)
                 and tx["id"] not in self.committed]
        absent, self._absent = self._absent, None
        if absent is None or absent[0] != facts.head.hash:
            absent = ("", set())
        ask = [tx["id"] for tx in fresh if tx["id"] not in absent[1]]
        if ask:  # already on the chain (before a restart, say): answered, never batched again
            done = facts.committed(ask)
            if done:
                for tx_id, seq in done.items():
                    self._committed(tx_id, seq, out)
                fresh = [tx for tx in fresh if tx["id"] not in done]
        if from_client:
            for tx in fresh:
                self.outstanding[tx["id"]] = (tx, now)
            self._arm_retry(out)
        self._route(fresh, hops, facts, out)
        return out

    def _route(self, txs: list[dict[str, Any]], hops: int, facts: NodeFacts,
               out: list[Action]) -> None:
        target = facts.primary
        if facts.leads or target == self.index:
            for tx in txs:
                if tx["id"] not in self.inflight_ids:
                    self.pool.setdefault(tx["id"], tx)
            self._schedule(self.cfg.batch_delay, out)
        elif txs and hops < MAX_HOPS:
            out.append(ForwardTxs(target, txs, hops + 1))

    def register(self, wait: TxWait, *, facts: NodeFacts | None = None) -> list[Action]:
        """Watch the ids of ``wait`` (a :class:`Resolve` comes when all have committed).

        Ids already on the chain (``facts.committed``, or this batcher's memory) are
        done at once, with the block they committed in.
        """
        out: list[Action] = []
        unknown = [tx_id for tx_id in wait.remaining if tx_id not in self.committed]
        if unknown and facts is not None:
            found = facts.committed(unknown)
            for tx_id, seq in found.items():
                self._remember(tx_id, seq)
            self._absent = (facts.head.hash, set(unknown).difference(found))
        for tx_id in list(wait.remaining):
            if tx_id in self.committed:  # a client re-sending what already committed
                if wait.done(tx_id, self.committed[tx_id]):
                    out.append(Resolve(wait))
            else:
                self.waits.setdefault(tx_id, []).append(wait)
        return out

    def _remember(self, tx_id: str, seq: int) -> None:
        self.committed[tx_id] = seq
        self.committed.move_to_end(tx_id)
        while len(self.committed) > REMEMBER:
            self.committed.popitem(last=False)

    def _committed(self, tx_id: str, seq: int, out: list[Action]) -> None:
        """``tx_id`` is on the chain in block ``seq``: answer its waiters, stop watching it."""
        for wait in self.waits.pop(tx_id, ()):
            if wait.done(tx_id, seq):
                out.append(Resolve(wait))
        self._remember(tx_id, seq)
        self.outstanding.pop(tx_id, None)
        self.pool.pop(tx_id, None)

    def forget(self, wait: TxWait) -> None:
        """Drop a wait registered with :meth:`register` (answered or timed out)."""
        for tx_id in wait.remaining:
            waits = self.waits.get(tx_id)
            if waits is not None and wait in waits:
                waits.remove(wait)
                if not waits:
                    del self.waits[tx_id]

    # ------------------------------------------------------------------ events
    def on_view(self, *, facts: NodeFacts) -> list[Action]:
        """The view changed or recovery ended: lead, or hand the pool to the leader."""
        out: list[Action] = []
        self._on_view(facts, out)
        return out

    def _on_view(self, facts: NodeFacts, out: list[Action]) -> None:
        waiting = [tx for tx, _ in self.outstanding.values()
                   if tx["id"] not in self.committed and tx["id"] not in self.pool]
        if waiting:
            self._route(waiting, 0, facts, out)  # the clients' transactions go to the new primary
        if facts.leads:
            self.head = None
            for txs in self.proposed.values():
                for tx in txs:
                    if tx["id"] not in self.committed:
                        self.pool.setdefault(tx["id"], tx)
            self.proposed.clear()
            self.inflight_ids.clear()
            self._schedule(0.0, out)
        elif self.pool and facts.primary != self.index:
            txs = list(self.pool.values())
            self.pool.clear()
            self._route(txs, 0, facts, out)

    def on_executed(self, block: Block, ok: bool, *, facts: NodeFacts) -> list[Action]:
        """A block was executed on this node (``ok``: appended or already held).

        ``facts`` is the node after the block.
        """
        out: list[Action] = []
        if ok:
            for tx in block.transactions:
                tx_id = tx.get("id") if isinstance(tx, dict) else None
                if isinstance(tx_id, str):
                    self._committed(tx_id, block.sequence_no, out)
        txs = self.proposed.pop(block.hash, None)
        if txs is not None:
            self.inflight_ids.difference_update(tx["id"] for tx in txs)
            if self.head is not None and self.head.hash == block.hash:
                self.head = None
            if not ok:
                self.head = None  # blocks built on this one are doomed too
                self._requeue(txs, facts)
        if self.pool:
            self._schedule(0.0, out)
        return out

    def _requeue(self, txs: list[dict[str, Any]], facts: NodeFacts) -> None:
        """Put back a rejected block's transactions, dropping those that are invalid.

        Only a faulty forwarder's transactions (or conflicting enrolments) fail here:
        this node checked its clients' transactions on arrival.
        """
        back: list[tuple[str, dict[str, Any]]] = []
        on_chain = facts.committed([tx["id"] for tx in txs if tx["id"] not in self.committed])
        for tx in txs:
            if tx["id"] in self.committed or tx["id"] in on_chain:
                continue
            try:
                parsed = Transaction.from_json(tx)
                check_transaction(parsed)
            except LedgerError:
                continue
            model = parsed.data.get("model-params")
            if model is not None and not facts.has_model(model):
                continue
            back.append((tx["id"], tx))
        kept = admissible(facts.state, (tx for _, tx in back))  # the rules, in order
        back = [(tx["id"], tx) for tx in kept]
        ids = {k for k, _ in back}
        self.pool = collections.OrderedDict(back + [kv for kv in self.pool.items() if kv[0] not in ids])

    def on_timer(self, kind: BatchTimer, *, facts: NodeFacts, now: float,
                 wall: float) -> list[Action]:
        """The timer of ``kind`` fired.

        Parameters
        ----------
        kind : BatchTimer
            Which timer (armed by an earlier :class:`SetTimer`).
        facts : NodeFacts
            The node as it is now.
        now : float
            The time on the clock :meth:`add` was given.
        wall : float
            Unix seconds, the timestamp of blocks built now (raised to their parent's).
        """
        out: list[Action] = []
        self.armed.discard(kind)
        if kind is BatchTimer.BUILD:
            self._build(facts, wall, out)
        elif kind is BatchTimer.RETRY:
            self._retry(facts, now, out)
        return out

    def close(self) -> list[Action]:
        """Disarm every timer (the node is stopping)."""
        out: list[Action] = [CancelTimer(kind) for kind in BatchTimer if kind in self.armed]
        self.armed.clear()
        return out

    # ------------------------------------------------------------------ building
    def _schedule(self, delay: float, out: list[Action]) -> None:
        if BatchTimer.BUILD not in self.armed:  # an armed build is not hurried
            self.armed.add(BatchTimer.BUILD)
            out.append(SetTimer(BatchTimer.BUILD, delay))

    def _build(self, facts: NodeFacts, wall: float, out: list[Action]) -> None:
        if not facts.leads:
            if self.pool and facts.primary != self.index:
                self._on_view(facts, out)
            return
        cfg = self.cfg
        while self.pool and len(self.proposed) < cfg.max_inflight:
            batch: list[dict[str, Any]] = []
            while self.pool and len(batch) < cfg.batch_size:
                tx_id, tx = self.pool.popitem(last=False)
                # the block's signature vouches for every signature in it (:mod:`.vouch`):
                # a forwarded transaction is verified here (a client's was, on arrival: memo hit)
                if tx_id not in self.committed and tx_id not in self.inflight_ids and _signature_ok(tx):
                    batch.append(tx)
            if not batch:
                break
            prev = self.head if self.head is not None else facts.head
            try:
                block = build_block(prev, {"transactions": batch}, self.key,
                                    max(wall, float(prev.timestamp)), copy=False)
            except LedgerError:
                continue  # not JSON-serialisable: a faulty forwarder's garbage
            self.proposed[block.hash] = batch
            self.inflight_ids.update(tx["id"] for tx in batch)
            self.head = block
            out.append(ProposeBlock(block))

    # ------------------------------------------------------------------ retries
    def _arm_retry(self, out: list[Action]) -> None:
        if BatchTimer.RETRY not in self.armed:
            self.armed.add(BatchTimer.RETRY)
            out.append(SetTimer(BatchTimer.RETRY, min(self.cfg.request_timeout, self.cfg.tx_retry) / 2))

    def _retry(self, facts: NodeFacts, now: float, out: list[Action]) -> None:
        """Watch client transactions that have not committed yet.

        After ``request_timeout`` the node pings the primary through PBFT (a view change
        replaces a primary that does not order it); after ``tx_retry`` it forwards them
        again (a primary may have dropped them).
        """
        stale = [k for k, (_, t) in self.outstanding.items() if now - t > OUTSTANDING_TTL]
        for key in stale:
            del self.outstanding[key]
        oldest = min((t for _, t in self.outstanding.values()), default=now)
        if now - oldest > self.cfg.request_timeout:
            out.append(Ping())
        due = [tx for tx, t in self.outstanding.values()
               if now - t > self.cfg.tx_retry and tx["id"] not in self.committed
               and tx["id"] not in self.inflight_ids and tx["id"] not in self.pool]
        if due:
            for tx in due:
                self.outstanding[tx["id"]] = (tx, now)
            self._route(due, 0, facts, out)
        if self.outstanding:
            self._arm_retry(out)
