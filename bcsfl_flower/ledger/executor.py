"""A ledger node's execution of committed entries, strictly in order, without blocking its loop.

PBFT hands the node ``Committed`` entries in sequence order, interleaved with the
checkpoint outputs (``CheckpointDue``, ``Stabilised``, ``FetchState``) whose meaning
depends on what was executed before them. Most entries execute at once, as the
replica emits them. A ``model`` operation names its bytes instead of carrying them
(:mod:`~.ops`, :mod:`~.receipts`); a node that holds neither the model nor its staged
bytes must fetch them from a receipt signer first, over HTTP. It must not execute
anything after that entry meanwhile (execution is a function of the order), nor block
the asyncio loop that drives PBFT and serves HTTP. So :class:`Executor` parks: that
entry and every order-sensitive output after it wait in a queue, a task fetches the
bytes (:func:`~.model_relay.fetch_model`: each signer, then every other peer, again
every few seconds until one serves them; f+1 signers include a correct node that
holds them) and then drains the queue in order. PBFT messages and timers are not
queued: the replica goes on agreeing while this node executes behind it; its
checkpoint digest for a sequence number is computed only when the queue reaches it.

Whether a model operation is valid (uploader, size, receipts: :func:`~.ops.check_model_op`)
is decided before anything is fetched, so an operation refused on every node makes no
node wait. Storage failures still stop the node (exit status 70): stopping beats
diverging.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Union

from bcsfl_flower.consensus.outputs import CheckpointDue, Committed, FetchState, Stabilised

from .model_relay import fetch_model
from .ops import MissingModel, ModelRef, apply_op

if TYPE_CHECKING:  # pragma: no cover
    from .node import LedgerNode

__all__ = ["Executor"]

log = logging.getLogger(__name__)

Ordered = Union[Committed, CheckpointDue, Stabilised, FetchState]


class Executor:
    """Executes a node's committed entries in order, parking behind a model fetch (module docstring).

    Parameters
    ----------
    node : LedgerNode
        The node (its ledger, staging area, replica keys, peers' URLs, snapshot driver,
        waiters and stats are used).
    retry : float (default: 1.0)
        Seconds between rounds of asking every peer for missing bytes (doubling up to 8x).
    fetch_timeout : float (default: 60.0)
        Seconds one peer may take to serve a model.
    """

    def __init__(self, node: LedgerNode, retry: float = 1.0, fetch_timeout: float = 60.0) -> None:
        self.node = node
        self.retry = retry
        self.fetch_timeout = fetch_timeout
        self.executed_seq = 0  # the last sequence number executed here (the replica may be ahead)
        self._queue: collections.deque[Ordered] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.stats: dict[str, Any] = {"models_fetched": 0, "model_bytes_fetched": 0, "fetch_rounds_failed": 0,
                                      "parked": 0, "largest_model_op": 0, "last_model_refusal": None}

    @property
    def parked(self) -> bool:
        """Whether entries wait behind a model fetch."""
        return self._task is not None

    def push(self, out: Ordered) -> None:
        """Execute (or queue behind a parked entry) one ``Committed`` or checkpoint output, in order.

        Parameters
        ----------
        out : Committed | CheckpointDue | Stabilised | FetchState
            The replica's output, in the order it was emitted.
        """
        if self._task is None:
            if isinstance(out, Committed):
                if self._execute(out):
                    return
            else:
                self.node.snapshot.on_output(out)
                return
            self.stats["parked"] += 1
            self._task = asyncio.ensure_future(self._drain())
        self._queue.append(out)  # a parked entry goes first: the drain takes it from the front

    def close(self) -> None:
        """Stop a fetch in progress (the node is closing); queued entries are dropped."""
        if self._task is not None:
            self._task.cancel()
        self._queue.clear()

    # ------------------------------------------------------------------ execution
    def _execute(self, entry: Committed, data: bytes | None = None) -> bool:
        """Execute ``entry``; False (nothing written) if it is a valid model operation without its bytes."""
        node = self.node
        if entry.noop or entry.request is None:
            self.executed_seq = entry.seq
            return True
        op = node.parse(entry.request.value)
        if op is None:
            result: dict[str, Any] = {"ok": False, "reason": "malformed operation"}
        else:
            try:
                if op.model is not None and data is None and not node.ledger.has_model(op.model.hash):
                    data = self._staged(op.model)
                if op.kind == "block" and op.block is not None:
                    node.vouching.before_execute(op.block)
                result = apply_op(node.ledger, op, node.chain.head.sequence_no, node.keys, data)
            except MissingModel:
                return False
            except (sqlite3.Error, OSError):  # local storage failure: stopping beats diverging
                log.critical("node %d: cannot execute seq %d; stopping", node.index, entry.seq, exc_info=True)
                os._exit(70)
            except Exception as err:  # noqa: BLE001 - same input, same outcome on every node
                log.exception("node %d: operation at seq %d refused", node.index, entry.seq)
                result = {"ok": False, "reason": f"operation failed: {type(err).__name__}"}
        self.executed_seq = entry.seq
        node.stats["executed_ops"] += 1
        if not result.get("ok"):
            node.stats["rejected_ops"] += 1
        if op is not None and op.model is not None:
            self.stats["largest_model_op"] = max(self.stats["largest_model_op"], len(entry.request.value))
            if result.get("ok"):
                node.staging.discard(op.model.hash)  # in the store now
            else:
                self.stats["last_model_refusal"] = {"seq": entry.seq, "hash": op.model.hash,
                                                    "reason": result.get("reason")}
        if op is not None and op.kind == "block" and op.block is not None:
            node._after_block(op.block, result)
        fut = node._waiters.pop(entry.request.key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
        if node.recovering:
            node._check_recovered()
        return True

    def _staged(self, ref: ModelRef) -> bytes | None:
        data = self.node.staging.get(ref.hash)  # re-checked against the digest
        return data if data is not None and len(data) == ref.size else None

    # ------------------------------------------------------------------ parked
    async def _drain(self) -> None:
        try:
            while self._queue:
                out = self._queue[0]  # stays at the front while it runs: later outputs queue behind
                if isinstance(out, Committed):
                    data = None
                    while not self._execute(out, data):
                        data = await self._fetch(out)
                elif isinstance(out, Stabilised) and out.checkpoint.seq > self.executed_seq \
                        and self._defer(out):
                    continue
                else:
                    self.node.snapshot.on_output(out)
                self._queue.popleft()
        finally:
            self._task = None

    def _defer(self, out: Stabilised) -> bool:
        """Move a checkpoint that became stable before this node executed it behind its entry, so
        the node persists it only once its file holds that state; False if that entry is not queued."""
        later = [i for i, o in enumerate(self._queue) if isinstance(o, Committed) and o.seq <= out.checkpoint.seq]
        if not later:
            return False
        self._queue.popleft()
        self._queue.insert(later[-1], out)  # indices shifted by the popleft: right after that entry
        return True

    async def _fetch(self, entry: Committed) -> bytes | None:
        """The bytes of ``entry``'s model, from a receipt signer or another peer, retried until found;
        None once they arrived in the staging area meanwhile (a late push)."""
        node = self.node
        assert entry.request is not None
        op = node.parse(entry.request.value)
        assert op is not None and op.model is not None
        ref = op.model
        signers = [r["node"] for r in ref.receipts]  # valid: check_model_op passed
        order = [j for j in signers if j != node.index] + \
                [j for j in range(node.n) if j != node.index and j not in signers]
        urls = [node.http_urls[j] for j in order if j < len(node.http_urls) and node.http_urls[j]]
        delay = self.retry
        while True:
            log.info("node %d: seq %d needs model %s (%d bytes): fetching from %s", node.index, entry.seq,
                     ref.hash[:16], ref.size, [j for j in order])
            data, why = await fetch_model(urls, ref.hash, ref.size, self.fetch_timeout)
            if data is not None:
                self.stats["models_fetched"] += 1
                self.stats["model_bytes_fetched"] += len(data)
                return data
            self.stats["fetch_rounds_failed"] += 1
            log.warning("node %d: no peer served model %s for seq %d (again in %.1fs): %s", node.index,
                        ref.hash[:16], entry.seq, delay, "; ".join(why)[:500])
            await asyncio.sleep(delay)
            if self._staged(ref) is not None:
                return None  # a push arrived meanwhile: _execute reads it from staging
            delay = min(delay * 2, 8 * self.retry)
