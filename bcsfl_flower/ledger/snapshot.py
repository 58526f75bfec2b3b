"""Checkpoints of a ledger node: the application digest, the persisted checkpoint, state transfer.

The node runs its replica with application checkpoints (``PBFTConfig.app_checkpoints``):
at each checkpoint sequence number ``s`` the replica asks (``CheckpointDue``) for a
digest of the node's state after executing through ``s``, and 2f+1 replicas must sign
the same one for the checkpoint to become stable. That digest, :class:`AppDigest`,
names the chain's height and head hash, a digest of the federation state after the
head (identities, roles, stakes, the round, the seed, the global model, the pool) and
the count and a digest of the stored models. The head hash authenticates every block
below it (each names its predecessor's hash); the rest lets a node check that its own
state derived from those blocks is the certified one.

Three things follow (:class:`SnapshotDriver`, the node's hooks):

* each stable checkpoint (``Stabilised``) is written to the node's SQLite file
  (``meta`` table) once the file holds the state there, so a restarted node hands it
  to its replica (``initial=``) and resumes from its own file: the peers send only the
  entries above it, and execution skips the blocks the file already holds;
* when the replica holds a stable checkpoint's proof beyond what it executed
  (``FetchState``: the peers truncated their logs below it), the node fetches the
  blocks it lacks and the models they reference over HTTP (:mod:`~.transfer_plan`
  plans and checks, :mod:`~.statefetch` reads, in a worker thread so the event loop
  keeps running), appends each through the ledger's every rule, checks its state
  against the certified digest, and tells the replica (``state_transferred``);
* the counts of transfers, blocks, models and bytes fetched are in ``GET /health``.

Limits. A transfer holds the blocks it fetched in memory until the certified head
has checked them (``FetchLimits.max_total_bytes`` bounds it). The store's models are
content-addressed, so any peer's bytes are checked by their digest; the models no block
references yet (uploaded for a round in progress) are taken from a peer's list, which
may hold more than the checkpoint did if that peer stored more since: the node then
stores a superset (``model_set_differs`` in the stats). A node whose file is ahead of
its replica after a restart signs another digest at the checkpoints its replica replays
below the file's head; its vote does not count there, and it agrees again past them.

Nothing here touches the replica's internals: the outputs ``CheckpointDue``,
``Stabilised`` and ``FetchState`` and the calls ``checkpoint_ready``, ``state_transferred``
and ``Replica(initial=...)`` are the consensus package's interface to its driver.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bcsfl_flower.consensus.checkpoint import valid_stable
from bcsfl_flower.consensus.outputs import CheckpointDue, FetchState, Stabilised
from bcsfl_flower.consensus.state import StableCheckpoint
from bcsfl_flower.crypto import sha256_hex
from bcsfl_flower.federation import FederationState
from bcsfl_flower.federation.certificate import digest_json

from .block import Block, LedgerError
from .sqlite import SqliteLedger
from .statefetch import Diverged, Transfer, transfer
from .transfer_plan import FetchLimits, TransferError, peer_order

if TYPE_CHECKING:  # pragma: no cover
    from .node import LedgerNode

__all__ = ["AppDigest", "SNAPSHOT_OUTPUTS", "SnapshotDriver", "decode_checkpoint", "encode_checkpoint",
           "federation_digest", "pbft_settings"]

log = logging.getLogger(__name__)

#: The replica outputs :meth:`SnapshotDriver.on_output` handles.
SNAPSHOT_OUTPUTS = (CheckpointDue, Stabilised, FetchState)
META_KEY = "pbft_checkpoint"
_VERSION = "bcsfl-snap1"
_ENV = {"checkpoint_interval": "BCSFL_LEDGER_CHECKPOINT_INTERVAL", "log_window": "BCSFL_LEDGER_LOG_WINDOW"}


def pbft_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The node's replica settings for checkpoints: application digests, and K / L from
    ``BCSFL_LEDGER_CHECKPOINT_INTERVAL`` / ``BCSFL_LEDGER_LOG_WINDOW`` when set.

    Parameters
    ----------
    env : Mapping[str, str] | None (default: None)
        Where to read the variables (None: ``os.environ``).
    """
    env = os.environ if env is None else env
    out: dict[str, Any] = {"app_checkpoints": True}
    for name, var in _ENV.items():
        raw = env.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"{var}={raw!r}: not a positive integer")
            out[name] = int(raw)
    return out


# ---------------------------------------------------------------------- the digest
def federation_digest(state: FederationState) -> str:
    """SHA-256 hex over the federation state: identities, roles, stakes, round, seed, models, pool."""
    return digest_json({
        "charter": state.charter_hash, "round": state.round, "seed": state.seed, "model": state.model,
        "previous_model": state.previous_model,
        "identities": {c: [i.public_key, i.role, i.stake, i.taken_part, i.enrolled_at]
                       for c, i in sorted(state.identities.items())},
        "pool": {c: p.to_json() for c, p in sorted(state.pool.items())},
    })


def models_digest(digests: Sequence[str]) -> str:
    """SHA-256 hex over a set of model digests (sorted, one per line)."""
    return sha256_hex("\n".join(sorted(digests)).encode("ascii"))


@dataclass(frozen=True)
class AppDigest:
    """What a checkpoint certifies of a node's state (the replica's opaque ``app_digest``).

    Parameters
    ----------
    height : int
        Blocks on the chain, genesis included (the head is block ``height - 1``).
    head : str
        The head block's hash.
    federation : str
        :func:`federation_digest` of the state after the head.
    models : int
        Models stored.
    models_digest : str
        :func:`models_digest` of their digests.
    """

    height: int
    head: str
    federation: str
    models: int
    models_digest: str

    @classmethod
    def of(cls, head: Block, state: FederationState, models: Sequence[str]) -> AppDigest:
        """The digest of a node whose chain ends at ``head``, with ``state`` and ``models`` stored."""
        return cls(head.sequence_no + 1, head.hash, federation_digest(state), len(models), models_digest(models))

    def text(self) -> str:
        """The string the replicas sign (under 300 characters)."""
        return f"{_VERSION}:{self.height}:{self.head}:{self.federation}:{self.models}:{self.models_digest}"

    @classmethod
    def parse(cls, text: str) -> AppDigest:
        """Read :meth:`text`'s form; ``ValueError`` if it is not one."""
        parts = text.split(":") if isinstance(text, str) else []
        if len(parts) != 6 or parts[0] != _VERSION or not parts[1].isdigit() or not parts[4].isdigit():
            raise ValueError(f"not an application digest: {str(text)[:80]!r}")
        return cls(int(parts[1]), parts[2], parts[3], int(parts[4]), parts[5])


# ---------------------------------------------------------------------- the persisted checkpoint
def encode_checkpoint(cp: StableCheckpoint) -> str:
    """A stable checkpoint as JSON text (its proof's signatures in hex)."""
    return json.dumps(cp.to_json(), separators=(",", ":"))


def decode_checkpoint(text: str, keys: Sequence[str]) -> StableCheckpoint:
    """The stable checkpoint :func:`encode_checkpoint` wrote, its 2f+1 signatures checked
    against ``keys`` (the replicas' public keys); ``ValueError`` if malformed or unproven."""
    try:
        cp = StableCheckpoint.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"malformed checkpoint record: {type(err).__name__}: {err}") from None
    if not valid_stable(cp, keys):
        raise ValueError(f"checkpoint {cp.seq}: its proof does not check out")
    return cp


# ---------------------------------------------------------------------- the node's hooks
class SnapshotDriver:
    """A ledger node's side of application checkpoints (see the module docstring).

    Parameters
    ----------
    node : LedgerNode
        The node (its ledger, chain view, batcher, replica and peers' URLs are used).
    limits : FetchLimits | None (default: None)
        Page size and byte bounds of a state transfer (None: ``FetchLimits()``).
    retry : float (default: 1.0)
        Seconds before a failed transfer is tried again (from the next peer first).
    """

    def __init__(self, node: LedgerNode, limits: FetchLimits | None = None, retry: float = 1.0) -> None:
        self.node = node
        self.ledger: SqliteLedger = node.ledger
        self.limits = limits or FetchLimits()
        self.retry = retry
        self.stats: dict[str, Any] = {"persisted_seq": 0, "transfers": 0, "blocks_fetched": 0,
                                      "models_fetched": 0, "bytes_fetched": 0, "failed_transfers": 0,
                                      "model_set_differs": 0, "last": None}
        self._target: StableCheckpoint | None = None  # what the replica waits for (newest FetchState)
        self._running = False  # a worker thread is fetching, or a retry is scheduled
        self._unpersisted: StableCheckpoint | None = None  # stable, but not executed here yet
        self._attempt = 0
        self._stop = threading.Event()

    @property
    def busy(self) -> bool:
        """Whether the replica waits for a state transfer."""
        return self._target is not None

    def initial(self) -> StableCheckpoint | None:
        """The checkpoint persisted in the node's file, if its proof holds and the file holds its
        chain (None otherwise: the replica starts from the genesis and catches up by log)."""
        text = self.ledger.get_meta(META_KEY)
        if text is None:
            return None
        try:
            cp = decode_checkpoint(text, self.node.keys)
            target = AppDigest.parse(cp.app_digest)
            if self.ledger.height() < target.height or self.ledger.block(target.height - 1).hash != target.head:
                raise ValueError("the file does not hold the checkpoint's chain")
        except (ValueError, KeyError) as err:
            log.warning("node %d: persisted checkpoint ignored: %s", self.node.index, err)
            return None
        self.stats["persisted_seq"] = self.stats["resumed_from"] = cp.seq
        log.info("node %d: resuming from persisted checkpoint %d (height %d; the file holds %d blocks)",
                 self.node.index, cp.seq, target.height, self.ledger.height())
        return cp

    def digest(self) -> AppDigest:
        """This node's :class:`AppDigest` now."""
        chain = self.node.chain
        return AppDigest.of(chain.head, chain.state, self.ledger.model_digests())

    def on_output(self, out: CheckpointDue | Stabilised | FetchState) -> None:
        """Act on a replica output of :data:`SNAPSHOT_OUTPUTS`."""
        if isinstance(out, CheckpointDue):
            # Outputs are handled in order: every Committed up to out.seq is executed by now.
            if self._unpersisted is not None and self._unpersisted.seq <= out.seq:
                self._persist(self._unpersisted)  # made stable by the peers before it executed here
            self.node._call(self.node.replica.checkpoint_ready, out.seq, self.digest().text())
        elif isinstance(out, Stabilised):
            self._stabilised(out.checkpoint)
        elif isinstance(out, FetchState):  # also re-sent on every heartbeat while behind
            if self._target is None or out.checkpoint.seq > self._target.seq:
                self._target = out.checkpoint
            if not self._running:
                self._start()

    def close(self) -> None:
        """Abandon a running transfer (the node is closing)."""
        self._stop.set()

    # ------------------------------------------------------------------ persistence
    def _stabilised(self, cp: StableCheckpoint) -> None:
        if cp.seq <= self.stats["persisted_seq"]:
            return
        if self.node.replica.last_executed >= cp.seq:
            self._persist(cp)
        else:  # stable, not executed here: a restart from it would skip state the file lacks
            self._unpersisted = cp

    def _persist(self, cp: StableCheckpoint) -> None:
        try:
            self.ledger.set_meta(META_KEY, encode_checkpoint(cp))
        except sqlite3.Error:  # local storage failure: stopping beats diverging
            log.critical("node %d: cannot persist checkpoint %d; stopping", self.node.index, cp.seq,
                         exc_info=True)
            os._exit(70)
        self.stats["persisted_seq"] = cp.seq
        if self._unpersisted is not None and self._unpersisted.seq <= cp.seq:
            self._unpersisted = None

    # ------------------------------------------------------------------ state transfer
    def _start(self) -> None:
        cp = self._target
        self._running = cp is not None and not self._stop.is_set()
        if not self._running or cp is None:
            return
        try:
            target = AppDigest.parse(cp.app_digest)
        except ValueError:  # 2f+1 replicas signed it, so a node of another version: nothing to fetch by
            log.error("node %d: checkpoint %d certifies no ledger state (%r)", self.node.index, cp.seq,
                      cp.app_digest[:80])
            self._running = False
            return
        view, n = self.node.replica.view, self.node.n  # the primaries of this view and the next serve last
        urls = peer_order(self.node.http_urls, self.node.index, self._attempt, busy=(view % n, (view + 1) % n))
        self._attempt += 1  # a retry starts at the next peer
        log.info("node %d: state transfer to checkpoint %d (height %d)", self.node.index, cp.seq, target.height)
        work = functools.partial(transfer, self.ledger, target.height, target.head, target.models, urls,
                                 self.limits, self._stop.is_set)
        fut = asyncio.get_running_loop().run_in_executor(None, work)
        fut.add_done_callback(functools.partial(self._finished, cp, target))

    def _finished(self, cp: StableCheckpoint, target: AppDigest, fut: asyncio.Future[Transfer]) -> None:
        if self._stop.is_set():
            return
        try:
            done = fut.result()
        except TransferError as err:
            self.stats["failed_transfers"] += 1
            log.warning("node %d: state transfer to %d failed (again in %.1fs): %s", self.node.index, cp.seq,
                        self.retry, err)
            asyncio.get_running_loop().call_later(self.retry, self._start)
            return
        except (Diverged, LedgerError, sqlite3.Error, OSError):  # stopping beats diverging
            log.critical("node %d: state transfer to %d impossible; stopping", self.node.index, cp.seq,
                         exc_info=True)
            os._exit(70)
        self._running = False
        for block in done.blocks:  # appended already: move the cached chain view and the batcher
            self.node.chain.executed(block, {"ok": True, "sequenceNo": block.sequence_no, "hash": block.hash})
            self.node.batcher.on_executed(block, True)
        self._account(done, cp, target)
        if self._target is not None and self._target.seq > cp.seq:  # a newer one was certified meanwhile
            self._start()
            return
        self._target = None
        self._persist(cp)
        self.node._call(self.node.replica.state_transferred, cp)
        self.node._check_recovered()
        self.node.resume()  # a node that lagged while running was never 'recovering' by the watch

    def _account(self, done: Transfer, cp: StableCheckpoint, target: AppDigest) -> None:
        mine = self.digest()
        if mine.height == target.height and mine.federation != target.federation:
            log.error("node %d: the federation state after the certified head differs from checkpoint %d's",
                      self.node.index, cp.seq)
        if mine.height == target.height and (mine.models, mine.models_digest) != (target.models,
                                                                                  target.models_digest):
            self.stats["model_set_differs"] += 1  # a peer stored more since (or served fewer)
            log.warning("node %d: %d models stored; checkpoint %d certified %d", self.node.index, mine.models,
                        cp.seq, target.models)
        s = self.stats
        s["transfers"] += 1
        s["blocks_fetched"] += len(done.blocks)
        s["models_fetched"] += done.models
        s["bytes_fetched"] += done.bytes
        s["last"] = {"seq": cp.seq, "from_height": done.start, "height": target.height, "blocks": len(done.blocks), "models": done.models,
                     "peer": done.peer, "skipped_peers": len(done.errors)}
        log.info("node %d: state transfer to %d done: %d blocks, %d models from %s (%d peers skipped)",
                 self.node.index, cp.seq, len(done.blocks), done.models, done.peer, len(done.errors))
