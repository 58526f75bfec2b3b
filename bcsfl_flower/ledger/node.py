"""One ledger node: a sans-IO PBFT replica driven over TCP, executing onto SQLite.

:class:`LedgerNode` owns a :class:`~bcsfl_flower.consensus.replica.Replica`, a
:class:`~.transport.PeerTransport` and a :class:`~.sqlite.SqliteLedger`. It feeds the
replica (requests, peer messages, timers on the asyncio clock, in seconds) and acts on
its outputs: sends frames, arms timers, and executes ``Committed`` entries with
:func:`~.ops.apply_op`, in order, on every node (:class:`~.executor.Executor`, which
parks execution, not the event loop, while it fetches a model's bytes from a peer:
uploads wait in a :class:`~.staging.Staging` folder, outside consensus).

Transactions are batched by the sans-IO :class:`~.batcher.Batcher` (one block, one PBFT
request), whose actions :class:`~.batch_driver.BatchDriver` carries out. The node starts
from the charter and keeps its view of the chain in a :class:`~.chain_view.ChainView`.

Exactly once: the batcher asks the node's SQLite file (:meth:`~.sqlite.SqliteLedger.committed`)
whether a transaction is already on the chain, so a transaction re-sent after a restart
is answered with its original block instead of being batched again.

Crash recovery: only the SQLite file (and one number, see :mod:`~.recovery`)
survives a crash. The file holds the last stable checkpoint (:mod:`~.snapshot`), from
which a restarted node's replica resumes; the peers' status heartbeats hand it the
committed entries above it (each with its 2f+1 commit certificate), idempotent
execution skips what the file already holds, and a :class:`~.recovery.Fence` keeps the
forgetful replica from contradicting votes it cast before the crash. Peers drop their
log below each stable checkpoint, so a node behind one fetches the blocks it lacks
over HTTP instead (state transfer, checked against the checkpoint's 2f+1 signatures).

Liveness: client requests go to every node (as PBFT clients retransmit), so every
backup times a primary that does not order them. Transactions are not PBFT requests
themselves; a node holding transactions that have not committed in
``request_timeout`` orders a tiny ``ping`` the same way, so a dead or fenced primary is
voted out by a view change and the transactions go to its successor.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcsfl_flower.consensus.messages import Request
from bcsfl_flower.consensus.outputs import (
    Broadcast, CancelTimer, Committed, Send, SetTimer, ViewEntered,
)
from bcsfl_flower.consensus.quorum import max_faulty
from bcsfl_flower.consensus.replica import NORMAL, PBFTConfig, Replica
from bcsfl_flower.crypto import SigningKey, verify_cache_stats

from .batch_driver import BatchDriver
from .batcher import BatchConfig, Batcher, NodeFacts
from .block import Block, LedgerError
from .chain_view import ChainView
from .executor import Executor
from .ops import Op, parse_op
from .recovery import Fence, RecoveryWatch
from .snapshot import SNAPSHOT_OUTPUTS, SnapshotDriver, pbft_settings
from .sqlite import SqliteLedger
from .staging import Staging
from .transport import PeerTransport
from .vouch_driver import VouchDriver
from .wire import APP, PBFT, WireError, decode_message, encode_message

__all__ = ["LedgerNode", "NodeConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    """Tuning of one node (times in seconds)."""

    batch_size: int = 1000
    batch_delay: float = 0.003
    max_inflight: int = 3
    request_timeout: float = 2.0
    status_interval: float = 0.1
    recovery_grace: float = 3.0
    tx_retry: float = 5.0
    max_model_bytes: int = 16 * 1024 * 1024
    pbft: dict[str, Any] = field(default_factory=dict)

    def pbft_config(self) -> PBFTConfig:
        """The replica's configuration in this node's time units (checkpoints: :func:`~.snapshot.pbft_settings`)."""
        base: dict[str, Any] = {"request_timeout": self.request_timeout,
                                "max_timeout": 16 * self.request_timeout,
                                "status_interval": self.status_interval, **pbft_settings()}
        base.update(self.pbft)
        return PBFTConfig(**base)


class LedgerNode:
    """A ledger node process's core (everything but HTTP).

    Parameters
    ----------
    index : int
        This node's replica index.
    key : SigningKey
        This node's key (signs PBFT messages and the batch blocks it produces).
    replica_keys : Sequence[str]
        Public keys of all nodes in index order.
    pbft_addrs : Sequence[tuple[str, int]]
        ``(host, port)`` of every node's PBFT listener in index order.
    db_path : str | os.PathLike[str]
        This node's SQLite file (created with the genesis block if absent).
    config : NodeConfig | None (default: None)
        Tuning; defaults are for a loopback cluster.
    http_urls : Sequence[str] (default: ())
        Every node's HTTP base URL in index order (served to clients for failover).
    charter : Block | None (default: None)
        The federation's signed charter block, installed as block 1 if the chain is at
        genesis. None: the chain must already hold a charter.

    Raises
    ------
    LedgerError
        If the chain holds another charter than ``charter``, or none and none is given.
    """

    def __init__(
        self,
        index: int,
        key: SigningKey,
        replica_keys: Sequence[str],
        pbft_addrs: Sequence[tuple[str, int]],
        db_path: str | os.PathLike[str],
        config: NodeConfig | None = None,
        http_urls: Sequence[str] = (),
        charter: Block | None = None,
    ) -> None:
        self.index = index
        self.key = key
        self.keys = tuple(replica_keys)
        self.n = len(self.keys)
        self.f = max_faulty(self.n)
        self.cfg = config or NodeConfig()
        self.http_urls = list(http_urls)
        self.ledger = SqliteLedger(db_path)
        try:
            self.chain = ChainView(self.ledger, charter, self.cfg.max_model_bytes)
        except BaseException:
            self.ledger.close()
            raise
        self.snapshot = SnapshotDriver(self)
        self.staging = Staging(Path(db_path).with_suffix(".staging"))  # uploads not yet ordered
        self.executor = Executor(self)
        self.replica = Replica(index, key, self.keys, validate=self._validate,
                               config=self.cfg.pbft_config(), initial=self.snapshot.initial())
        # PBFT links only from the nodes whose keys these are (signed handshake per connection)
        self.transport = PeerTransport(index, pbft_addrs, self._on_frame, on_connect=self._hello,
                                       key=key, peer_keys=self.keys)
        self.batcher = BatchDriver(Batcher(index, key, BatchConfig.of(self.cfg)), self)
        # f+1 vouches spare verifications
        self.vouching = VouchDriver(index, key, self.keys, self.send_app, primary=lambda: self.replica.primary,
                                    connected=self.transport.connected_peers)
        self.client_id = f"node{index}-{uuid.uuid4().hex[:12]}"  # fresh per boot: rids restart
        self._rid = 0
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}
        self._held: list[Request] = []
        self._parsed: collections.OrderedDict[str, Op | None] = collections.OrderedDict()
        self.watch = RecoveryWatch(index, self.keys, self.f, self.cfg.recovery_grace, time.monotonic())
        self.fence = Fence(Path(db_path).with_suffix(".pbft.json"), self.n - 1)
        self.stats = {"executed_ops": 0, "rejected_ops": 0, "executed_txs": 0,
                      "ingress_verified_txs": 0, "blocks_built": 0}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen for peers, arm the replica and start the recovery clock."""
        self.watch.started = time.monotonic()
        await self.transport.start()
        self._call(self.replica.start)
        if not self.recovering:
            self.batcher.on_view()
        asyncio.get_running_loop().call_later(self.cfg.recovery_grace, self._check_recovered)

    async def close(self) -> None:
        """Stop timers and the transport, fail waiters and close the SQLite file."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.batcher.close()
        self.vouching.close()
        self.executor.close()
        self.snapshot.close()
        await self.transport.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        self.ledger.close()

    # ------------------------------------------------------------------ replica driving
    def _call(self, fn: Callable[..., list[Any]], *args: Any) -> None:
        """Call a replica method and act on its outputs."""
        executed = self.replica.last_executed
        self._handle(fn(*args), executed)

    def _handle(self, outputs: list[Any], executed: int) -> None:
        for out in outputs:
            if isinstance(out, Broadcast):
                if self.fence.allowed(out.msg, executed, self.recovering):
                    self.transport.broadcast(PBFT, encode_message(out.msg))
            elif isinstance(out, Send):
                if self.fence.allowed(out.msg, executed, self.recovering):
                    self.transport.send(out.to, PBFT, encode_message(out.msg))
            elif isinstance(out, (Committed, *SNAPSHOT_OUTPUTS)):
                self.executor.push(out)  # in order; parks behind a model fetch
            elif isinstance(out, SetTimer):
                self._arm(out)
            elif isinstance(out, CancelTimer):
                current = self._timers.get(out.kind)
                if current is not None and current[0] == out.timer_id:
                    current[1].cancel()
                    del self._timers[out.kind]
            elif isinstance(out, ViewEntered):
                log.info("node %d: entered view %d (primary %d)", self.index, out.view, out.primary)
                if not self.recovering:
                    self.batcher.on_view()

    def _arm(self, timer: SetTimer) -> None:
        old = self._timers.pop(timer.kind, None)
        if old is not None:
            old[1].cancel()
        handle = asyncio.get_running_loop().call_later(timer.delay, self._fire, timer.timer_id)
        self._timers[timer.kind] = (timer.timer_id, handle)

    def _fire(self, timer_id: int) -> None:
        for kind, (tid, _) in list(self._timers.items()):
            if tid == timer_id:
                del self._timers[kind]
        self._call(self.replica.on_timer, timer_id)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        if kind == APP:
            self._on_app(payload)
            return
        if kind != PBFT:
            return
        try:
            msg = decode_message(payload)
        except WireError as err:
            log.warning("node %d: undecodable PBFT frame: %s", self.index, err)
            return
        if self.recovering:
            self.watch.observe(msg)
        self._call(self.replica.receive, msg)
        if self.recovering:
            self._check_recovered()

    def _on_app(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if obj.get("type") == "txs" and isinstance(obj.get("txs"), list):
            hops = obj.get("hops")
            self.batcher.add(obj["txs"], hops=hops if type(hops) is int else 1)
        elif obj.get("type") == "vouch":
            self.vouching.receive(obj)
        elif obj.get("type") == "check":
            self.vouching.check(obj)
        elif obj.get("type") == "hello":
            peer, boot = obj.get("from"), obj.get("boot")
            if type(peer) is int and 0 <= peer < self.n and peer != self.index \
                    and isinstance(boot, str) and self.fence.peer_booted(peer, boot):
                log.info("node %d: every peer restarted since; may lead any view", self.index)
                self.batcher.on_view()
        elif obj.get("type") == "request":
            client, rid, value = obj.get("client"), obj.get("rid"), obj.get("value")
            if isinstance(client, str) and type(rid) is int and isinstance(value, str):
                self._submit_request(Request.make(client, rid, value))

    def _hello(self, peer: int) -> None:
        self.send_app(peer, {"type": "hello", "from": self.index, "boot": self.client_id})

    def send_app(self, to: int, obj: dict[str, Any]) -> None:
        """Send a driver-to-driver JSON message (e.g. forwarded transactions)."""
        self.transport.send(to, APP, json.dumps(obj, separators=(",", ":")).encode())

    # ------------------------------------------------------------------ recovery
    @property
    def recovering(self) -> bool:
        """Whether the node is still catching up after a (re)start, or fetching state (it leads nothing)."""
        return self.watch.recovering or self.snapshot.busy

    def _check_recovered(self) -> None:
        why = self.watch.done(self.replica.last_executed, time.monotonic())
        if why is not None:
            log.info("node %d: recovered (%s); chain height %d", self.index, why, self.ledger.height())
            self.resume()

    def resume(self) -> None:
        """Once neither recovering nor fetching state: order the requests held, let the batcher propose."""
        if self.recovering:
            return
        held, self._held = self._held, []
        for req in held:
            self._call(self.replica.submit, req)
        self.batcher.on_view()

    # ------------------------------------------------------------------ ordering
    @property
    def is_primary(self) -> bool:
        """Whether this node leads its current view and may propose in it."""
        return (self.replica.is_primary and self.replica.status == NORMAL
                and not self.recovering and self.fence.may_lead(self.replica.view))

    def parse(self, value: str) -> Op | None:
        """The parsed operation of a request value (memoised), or ``None`` if invalid."""
        if value in self._parsed:
            self._parsed.move_to_end(value)
            return self._parsed[value]
        try:
            op: Op | None = parse_op(value, self.chain.max_model_bytes)
        except (LedgerError, RecursionError, ValueError, TypeError):
            op = None
        self._parsed[value] = op
        while len(self._parsed) > 64:
            self._parsed.popitem(last=False)
        return op

    def remember(self, value: str, op: Op) -> None:
        """Seed the parse memo with an operation this node built itself."""
        self._parsed[value] = op
        while len(self._parsed) > 64:
            self._parsed.popitem(last=False)

    def _validate(self, value: str) -> bool:
        return self.parse(value) is not None

    def submit(self, value: str, track: bool = True,
               broadcast: bool = False) -> asyncio.Future[dict[str, Any]]:
        """Order one operation; the future resolves with this node's execution result.

        Parameters
        ----------
        value : str
            An operation (see :mod:`~.ops`); call :meth:`parse` first to reject bad
            ones with a reason.
        track : bool (default: True)
            Whether to keep a waiter for the result (False: fire and forget).
        broadcast : bool (default: False)
            Also hand the request to every peer, so that every backup times the primary
            (a client's request; the primary's own batch blocks need not).

        Returns
        -------
        asyncio.Future[dict[str, Any]]
            Resolves to :func:`~.ops.apply_op`'s result once committed and executed here.
        """
        self._rid += 1
        req = Request.make(self.client_id, self._rid, value)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if track:
            self._waiters[req.key] = fut
            fut.add_done_callback(functools.partial(self._forget_waiter, req.key))
        self._submit_request(req)
        if broadcast:
            for j in range(self.n):
                if j != self.index:
                    self.send_app(j, {"type": "request", "client": req.client, "rid": req.rid,
                                      "value": req.value})
        return fut

    def _forget_waiter(self, key: tuple[str, int], _fut: object) -> None:
        self._waiters.pop(key, None)

    def _submit_request(self, req: Request) -> None:
        if self.recovering:
            self._held.append(req)
        else:
            self._call(self.replica.submit, req)

    def batch_facts(self) -> NodeFacts:
        """What the batcher reads of this node at an event (see :class:`~.batcher.NodeFacts`)."""
        return NodeFacts(self.replica.primary, self.is_primary, self.chain.head, self.chain.state,
                         self.ledger.has_model, self.ledger.committed)

    # ------------------------------------------------------------------ execution
    def _after_block(self, block: Block, result: dict[str, Any]) -> None:
        if result.get("ok") and not result.get("duplicate"):
            self.stats["executed_txs"] += len(block.transactions)  # append verified each signature
        self.chain.executed(block, result)
        self.batcher.on_executed(block, bool(result.get("ok")))

    # ------------------------------------------------------------------ introspection
    def health(self) -> dict[str, Any]:
        """What ``GET /health`` reports."""
        rep = self.replica
        return {"status": "recovering" if self.recovering else "ok", "node": self.index,
                "nodes": self.n, "public": self.key.public_hex,
                "height": self.chain.head.sequence_no + 1, "head": self.chain.head.hash, "view": rep.view,
                "primary": rep.primary, "pbft_status": rep.status, "last_executed": rep.last_executed,
                "stable_seq": rep.h, "snapshot": dict(self.snapshot.stats), "recovering": self.recovering,
                "peers_connected": self.transport.connected_peers(),
                "transport": self.transport.stats(), "pool": len(self.batcher.pool),
                "stats": dict(self.stats, **self.vouching.stats), "signature_checks": verify_cache_stats(),
                "gc": {"threshold": gc.get_threshold(), "collections": [g["collections"] for g in gc.get_stats()],
                       "frozen": gc.get_freeze_count()},
                "models": {**self.executor.stats, "executed_seq": self.executor.executed_seq,
                           "parked_now": self.executor.parked, "staging": self.staging.stats()}}
