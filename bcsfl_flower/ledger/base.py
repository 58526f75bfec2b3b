"""The ``Ledger`` interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from bcsfl_flower.crypto import sha256_hex

from .block import Block, BlockRow, LedgerError
from .rules import referenced_models

__all__ = ["Ledger"]


class Ledger(abc.ABC):
    """An append-only hash chain of blocks plus a content-addressed model store.

    ``append`` validates a block completely before writing it (see
    ``rules.check_append``) and writes it atomically. Blocks whose ``data`` has an
    ``"identities"`` object (client_id -> public key) also register those identities
    in the same write; a conflicting registration rejects the block.
    """

    # -- chain ---------------------------------------------------------------------
    @abc.abstractmethod
    def latest(self) -> Block:
        """The newest block (the genesis block on a fresh ledger)."""

    @abc.abstractmethod
    def block(self, seq: int) -> Block:
        """The block with ``sequenceNo == seq``; raises ``KeyError`` if absent."""

    @abc.abstractmethod
    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        """Blocks with ``start <= sequenceNo < end`` (``end=None``: to the head)."""

    @abc.abstractmethod
    def height(self) -> int:
        """Number of blocks, genesis included."""

    @abc.abstractmethod
    def append(self, block: Block) -> None:
        """Validate ``block`` against the head and store it; raises ``LedgerError``."""

    # -- model store ---------------------------------------------------------------
    @abc.abstractmethod
    def put_model(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 hex digest (idempotent) and return it."""

    @abc.abstractmethod
    def has_model(self, digest: str) -> bool:
        """Whether the store holds ``digest``."""

    @abc.abstractmethod
    def read_model_raw(self, digest: str) -> bytes:
        """The stored bytes for ``digest`` without an integrity check (``KeyError``)."""

    def get_model(self, digest: str) -> bytes:
        """The model bytes stored under ``digest``.

        Parameters
        ----------
        digest : str
            SHA-256 hex digest returned by ``put_model``.

        Returns
        -------
        bytes
            The stored bytes.

        Raises
        ------
        KeyError
            If the store has no such model.
        LedgerError
            If the stored bytes no longer hash to ``digest`` (tampered storage).
        """
        data = self.read_model_raw(digest)
        if not isinstance(data, bytes) or sha256_hex(data) != digest:
            raise LedgerError(f"stored model {digest} does not hash to its key")
        return data

    def model_digests(self) -> list[str]:
        """Every digest in the model store.

        The default lists only the models referenced by blocks; backends that can
        enumerate their store override it.
        """
        found: dict[str, None] = {}
        for blk in self.blocks(1):
            found.update(dict.fromkeys(referenced_models(blk)))
        return [d for d in found if self.has_model(d)]

    # -- identities ----------------------------------------------------------------
    @abc.abstractmethod
    def register_identity(
        self, client_id: str, public_key: str, role: str = "client"
    ) -> None:
        """Bind ``client_id`` to ``public_key``.

        Idempotent for the same key; a different key for a known id raises
        ``LedgerError``.
        """

    @abc.abstractmethod
    def identity(self, client_id: str) -> str | None:
        """The public key registered for ``client_id``, or ``None``."""

    @abc.abstractmethod
    def identities(self) -> dict[str, dict[str, Any]]:
        """``client_id -> {"public_key", "role", "registered_at"}`` for every identity."""

    # -- raw access for verification ------------------------------------------------
    def block_rows(self) -> Iterator[BlockRow]:
        """Every stored block row in ``sequenceNo`` order, as raw as the backend allows.

        ``verify_chain`` reads these rather than ``blocks()``; the default derives
        them from ``blocks()``.
        """
        for blk in self.blocks():
            yield blk.to_row()

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Release resources; the ledger must not be used afterwards."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
