"""The asyncio side of transaction batching: runs the sans-IO :class:`~.batcher.Batcher`.

The batcher (paper Sec. IV-C: the ledger nodes' primary proposes blocks of clients'
transactions) decides; this driver feeds it events with the time read from the clock
and carries out the actions it returns on the node's event loop, as
:class:`~.node.LedgerNode` does for the PBFT replica's outputs: it arms timers with
``loop.call_later``, answers the HTTP clients' futures, and reaches the node through
the few methods of :class:`BatchHost` (no import of :mod:`~.node`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .batcher import (
    Action, Batcher, BatchTimer, CancelTimer, ForwardTxs, NodeFacts, Ping, ProposeBlock,
    Resolve, SetTimer, TxWait,
)
from .block import Block
from .ops import Op, encode_block_op, encode_ping_op

__all__ = ["BatchDriver", "BatchHost", "ClientWait"]


class BatchHost(Protocol):
    """What the driver uses of its node (:class:`~.node.LedgerNode` provides it)."""

    index: int
    stats: dict[str, int]

    def batch_facts(self) -> NodeFacts:
        """The node as the batcher must see it now."""

    def send_app(self, to: int, obj: dict[str, Any]) -> None:
        """Send a driver-to-driver JSON message to node ``to``."""

    def submit(self, value: str, track: bool = True,
               broadcast: bool = False) -> asyncio.Future[dict[str, Any]]:
        """Order one operation through PBFT."""

    def remember(self, value: str, op: Op) -> None:
        """Seed the node's parse memo with an operation it built itself."""


class ClientWait(TxWait):
    """A :class:`~.batcher.TxWait` whose ``future`` resolves to ``where`` when all commit."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(ids)
        self.future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()


class BatchDriver:
    """Runs one node's :class:`~.batcher.Batcher` on the running event loop.

    Parameters
    ----------
    core : Batcher
        The batcher.
    host : BatchHost
        The node: what the batcher sees of it, and how to send, order and count.
    clock : Callable[[], float] (default: time.monotonic)
        The batcher's ``now`` (seconds).
    wall : Callable[[], float] (default: time.time)
        Unix seconds, for the timestamps of the blocks the batcher builds.
    """

    def __init__(self, core: Batcher, host: BatchHost,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.core, self.host, self.clock, self.wall = core, host, clock, wall
        self._timers: dict[BatchTimer, asyncio.TimerHandle] = {}
        self._ping: asyncio.Future[dict[str, Any]] | None = None

    @property
    def pool(self) -> dict[str, dict[str, Any]]:
        """Transactions waiting to be built into a block (or forwarded)."""
        return self.core.pool

    @property
    def outstanding(self) -> dict[str, tuple[dict[str, Any], float]]:
        """This node's clients' transactions that have not committed yet."""
        return self.core.outstanding

    # ------------------------------------------------------------------ events
    def add(self, txs: list[Any], hops: int = 0, from_client: bool = False) -> None:
        """Take transactions from a client or a peer (see :meth:`~.batcher.Batcher.add`)."""
        self._run(self.core.add(txs, facts=self.host.batch_facts(), now=self.clock(),
                                hops=hops, from_client=from_client))

    def wait(self, ids: Sequence[str]) -> ClientWait:
        """Register interest in transaction ids; ``.future`` resolves when all commit."""
        wait = ClientWait(ids)
        self._run(self.core.register(wait, facts=self.host.batch_facts()))
        return wait

    def forget(self, wait: TxWait) -> None:
        """Drop a wait registered with :meth:`wait` (answered or timed out)."""
        self.core.forget(wait)

    def on_view(self) -> None:
        """The view changed or recovery ended: lead, or hand the pool to the leader."""
        self._run(self.core.on_view(facts=self.host.batch_facts()))

    def on_executed(self, block: Block, ok: bool) -> None:
        """A block was executed on this node (``ok``: appended or already held)."""
        self._run(self.core.on_executed(block, ok, facts=self.host.batch_facts()))

    def close(self) -> None:
        """Cancel pending timers."""
        self._run(self.core.close())
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _fire(self, kind: BatchTimer) -> None:
        self._timers.pop(kind, None)
        self._run(self.core.on_timer(kind, facts=self.host.batch_facts(), now=self.clock(),
                                     wall=self.wall()))

    # ------------------------------------------------------------------ actions
    def _run(self, actions: list[Action]) -> None:
        host = self.host
        for act in actions:
            if isinstance(act, ProposeBlock):
                host.stats["blocks_built"] += 1
                value = encode_block_op(act.block)
                host.remember(value, Op("block", block=act.block))  # no need to parse our own block
                host.submit(value, track=False)
            elif isinstance(act, ForwardTxs):
                host.send_app(act.to, {"type": "txs", "txs": act.txs, "hops": act.hops})
            elif isinstance(act, SetTimer):
                old = self._timers.pop(act.kind, None)
                if old is not None:
                    old.cancel()
                self._timers[act.kind] = asyncio.get_running_loop().call_later(
                    act.delay, self._fire, act.kind)
            elif isinstance(act, CancelTimer):
                handle = self._timers.pop(act.kind, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(act, Resolve):
                future = getattr(act.wait, "future", None)
                if future is not None and not future.done():
                    future.set_result(act.wait.where)
            elif isinstance(act, Ping):
                # At most one at a time: a primary that does not order it within
                # ``request_timeout`` is replaced by a view change.
                if self._ping is None or self._ping.done():
                    self._ping = host.submit(encode_ping_op(host.index), broadcast=True)
