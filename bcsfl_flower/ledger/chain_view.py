"""What a ledger node knows of its own chain: the charter it starts from, head, state, keys.

The federation's charter (block 1, signed by the enrolment authority) is given to every
node at start and installed locally on a chain still at genesis: it is the same signed
block on every node, so it needs no ordering, and a node whose chain holds another
charter refuses to start. After each executed block the node refreshes its copy of the
federation state after the head (enrolled keys, stakes, the charter's limits), which
the HTTP service reads to judge writes on arrival (:mod:`~.admission`) and answer
``/identities`` and ``/stakes`` without touching the file.
"""

from __future__ import annotations

from typing import Any

from bcsfl_flower.federation import FederationState

from .block import Block, LedgerError
from .sqlite import SqliteLedger

__all__ = ["ChainView"]


class ChainView:
    """A node's cached view of its chain, kept current by :meth:`executed`.

    Parameters
    ----------
    ledger : SqliteLedger
        The node's ledger.
    charter : Block | None
        The federation's signed charter block, installed as block 1 if the chain is at
        genesis. None: the chain must already hold a charter.
    max_model_bytes : int
        The node's own model size limit, used only while there is no charter.

    Raises
    ------
    LedgerError
        If the chain holds another charter than ``charter``, or none and none is given.
    """

    def __init__(self, ledger: SqliteLedger, charter: Block | None, max_model_bytes: int) -> None:
        if charter is not None:
            ledger.install_charter(charter)  # a no-op if it is there; refuses another
        elif ledger.state().charter is None:
            raise LedgerError("the chain has no charter and none was given (--charter FILE)")
        self.ledger = ledger
        self._fallback_max_model = max_model_bytes
        self.head: Block = ledger.latest()  # cached: parsing a big head block is not free
        self.state: FederationState = ledger.state()
        self.known_keys: set[str] = set()
        self._refresh()
        self._model_seq: int | None = -1  # -1: not looked up yet

    def _refresh(self) -> None:
        """Re-read the state after the head; rebuild the enrolled keys if identities changed."""
        before = self.state.identities
        self.state = self.ledger.state()
        if self.state.identities is not before or not self.known_keys:
            self.known_keys = {i.public_key for i in self.state.identities.values()}

    def executed(self, block: Block, result: dict[str, Any]) -> None:
        """``block`` was executed with ``result`` (``apply_op``'s): move the head and the state."""
        if result.get("ok") and block.sequence_no > self.head.sequence_no:
            self.head = block
        if result.get("ok") and not result.get("duplicate"):
            if block.data.get("model-params") is not None:
                self._model_seq = block.sequence_no
            self._refresh()

    @property
    def max_model_bytes(self) -> int:
        """The largest model the charter allows."""
        charter = self.state.charter
        return charter.max_model_bytes if charter is not None else self._fallback_max_model

    @property
    def latest_model_seq(self) -> int | None:
        """``sequenceNo`` of the newest block carrying a global model (None: none yet)."""
        if self._model_seq == -1:  # once per process; execution keeps it current after
            self._model_seq = None
            for seq in range(self.head.sequence_no, 0, -1):
                if self.ledger.block(seq).data.get("model-params") is not None:
                    self._model_seq = seq
                    break
        return self._model_seq
