"""The batcher's vocabulary: what it is told and what it asks its driver to do (sans-IO).

:class:`~.batcher.Batcher` batches the clients' signed transactions into the blocks
that the PBFT primary of the ledger nodes proposes (paper Sec. IV-C). Like the replica's
:mod:`~bcsfl_flower.consensus.outputs`, this module names its inputs and outputs as
plain values, so that the batcher needs neither the node nor an event loop:
:class:`BatchConfig` (tuning), :class:`NodeFacts` (what it may know of its node at an
event), :class:`BatchTimer` (its timers), the actions (:data:`Action`) that
:class:`~.batch_driver.BatchDriver` carries out, and :class:`TxWait` (a client waiting
for its transactions to commit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

from bcsfl_flower.federation import FederationState

from .block import Block

__all__ = [
    "Action", "BatchConfig", "BatchTimer", "CancelTimer", "ForwardTxs", "NodeFacts", "Ping",
    "ProposeBlock", "Resolve", "SetTimer", "TxWait",
]


class BatchTimer(str, Enum):
    """The batcher's timers; at most one of each kind is armed."""

    #: Build blocks from the pool (after ``batch_delay``, or at once when blocks are due).
    BUILD = "build"
    #: Look at the clients' transactions that have not committed (ping, forward again).
    RETRY = "retry"


@dataclass(frozen=True)
class BatchConfig:
    """Tuning of the batcher (times in seconds; the defaults are :class:`~.node.NodeConfig`'s).

    Parameters
    ----------
    batch_size : int (default: 1000)
        The most transactions in one block.
    batch_delay : float (default: 0.003)
        How long the primary lets transactions gather before it builds a block.
    max_inflight : int (default: 3)
        The most blocks of the primary proposed and not yet executed.
    request_timeout : float (default: 2.0)
        After this long without a commit, a node holding a client's transaction orders
        a ping (a primary that does not order it is replaced by a view change).
    tx_retry : float (default: 5.0)
        After this long without a commit, a client's transaction is forwarded again.
    """

    batch_size: int = 1000
    batch_delay: float = 0.003
    max_inflight: int = 3
    request_timeout: float = 2.0
    tx_retry: float = 5.0

    @classmethod
    def of(cls, config: Any) -> BatchConfig:
        """The fields of this class taken from ``config`` (e.g. a node's ``NodeConfig``)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class NodeFacts:
    """What the batcher reads of its node when an event arrives (a read-only snapshot).

    Parameters
    ----------
    primary : int
        The primary of the node's current view.
    leads : bool
        Whether this node leads its current view and may propose in it (normal
        operation, not recovering, not fenced).
    head : Block
        The chain's head (the parent of a block when none of this node's is in flight).
    state : FederationState
        The federation state after the head (to re-check a refused block's transactions).
    has_model : Callable[[str], bool]
        Whether the node stores the model with this digest (same purpose).
    committed : Callable[[Sequence[str]], Mapping[str, int]] (default: none are)
        Of these transaction ids, those already on the node's chain, each with its
        block's ``sequenceNo`` (read from the node's file, so it survives restarts:
        :meth:`~.sqlite.SqliteLedger.committed`).
    """

    primary: int
    leads: bool
    head: Block
    state: FederationState
    has_model: Callable[[str], bool]
    committed: Callable[[Sequence[str]], Mapping[str, int]] = lambda ids: {}


@dataclass(frozen=True)
class ForwardTxs:
    """Send ``txs`` (JSON objects) to node ``to``; ``hops`` counts this hop too."""

    to: int
    txs: list[dict[str, Any]]
    hops: int


@dataclass(frozen=True)
class ProposeBlock:
    """Order ``block`` (built and signed by this node) as one PBFT request."""

    block: Block


@dataclass(frozen=True)
class Ping:
    """Order a no-op through every node: transactions wait too long for the primary."""


@dataclass(frozen=True)
class SetTimer:
    """Call :meth:`Batcher.on_timer` with ``kind`` after ``delay`` seconds."""

    kind: BatchTimer
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    """Disarm the timer of ``kind``."""

    kind: BatchTimer


@dataclass(frozen=True)
class Resolve:
    """Every transaction ``wait`` waits for has committed: answer its client."""

    wait: TxWait


Action = Union[ForwardTxs, ProposeBlock, Ping, SetTimer, CancelTimer, Resolve]


class TxWait:
    """A client waiting for a set of transaction ids to commit.

    ``remaining`` holds those not committed yet, ``where`` maps each committed one to its
    block's ``sequenceNo``. A driver may subclass it to attach a future.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.remaining = set(ids)
        self.where: dict[str, int] = {}

    def done(self, tx_id: str, seq: int) -> bool:
        """``tx_id`` committed in block ``seq``; True when that was the last one awaited."""
        if tx_id not in self.remaining:
            return False
        self.remaining.discard(tx_id)
        self.where[tx_id] = seq
        return not self.remaining
