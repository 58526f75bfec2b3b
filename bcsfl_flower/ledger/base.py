"""The ``Ledger`` interface every backend implements."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.federation import FederationState, PooledPackage

from .block import Block, BlockRow, LedgerError, Transaction, build_block
from .replay import enrolment_of, pool_transaction, replay
from .rules import referenced_models

__all__ = ["Ledger", "identity_records"]


def superseded(package: PooledPackage, pool: Mapping[str, PooledPackage]) -> bool:
    """Whether pooling ``package`` would change nothing: it, or a newer one of its client, is pooled."""
    return not package.supersedes(pool.get(package.client_id))


def identity_records(state: FederationState) -> dict[str, dict[str, Any]]:
    """``client_id -> {"public_key", "role", "stake", "taken_part", "enrolled_at"}``, sorted by id."""
    return {cid: {"public_key": i.public_key, "role": i.role, "stake": i.stake,
                  "taken_part": i.taken_part, "enrolled_at": i.enrolled_at}
            for cid, i in sorted(state.identities.items())}


class Ledger(abc.ABC):
    """An append-only hash chain of blocks plus a content-addressed model store.

    ``append`` validates a block completely before writing it: its structure
    (``rules.check_append``) and that it follows from the federation state after the
    head (:meth:`FederationState.apply`: charter, enrolments, certified rounds), and
    writes it atomically. Identities and stakes are read off that state.
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
    def put_model(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` under its SHA-256 hex digest (idempotent) and return it.

        ``digest``: the caller's SHA-256 of ``data``, when it has just computed it (the
        strategy hashes each update once, when it verifies it). A local store then does
        not hash the bytes again; it does not trust the key either: every read checks the
        bytes against it (:meth:`get_model`), and so does ``verify_chain``. A remote
        ledger always hashes what it receives.
        """

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

    # -- federation state ------------------------------------------------------------
    def state(self) -> FederationState:
        """The federation state after the head: charter, enrolled identities, stakes, next seed.

        Every block was checked against the rules when it was appended; backends that
        another process may write to re-check what they have not seen yet.
        """
        return replay(self.blocks(1)).state

    def state_at(self, seq: int) -> FederationState:
        """The federation state after block ``seq`` (replayed from genesis)."""
        return replay(self.blocks(1, seq + 1)).state

    def install_charter(self, block: Block) -> None:
        """Append the federation's charter as block 1; a no-op if this very charter is there.

        Raises ``LedgerError`` if the ledger already has another charter or other blocks.
        """
        if self.height() > 1:
            if self.block(1).hash != block.hash:
                raise LedgerError("this ledger already has another charter (block 1)")
            return
        self.append(block)

    def register_identity(self, enrolment: Transaction) -> None:
        """Enrol an identity with the enrolment authority's signed transaction.

        Idempotent for an identity already enrolled with the same key. Local backends
        write a block holding the transaction (producer: a key of this ledger object;
        the authority is the transaction's signature); the remote backend submits it.
        """
        client_id, public_key, _ = enrolment_of(enrolment)
        self._append_transactions([enrolment], lambda: self.identity(client_id) == public_key,
                                  f"could not enrol {client_id!r}")

    def post_pool(self, packages: list[PooledPackage], carrier: SigningKey) -> None:
        """Pool signed packages for the next round (:mod:`bcsfl_flower.federation.pool`).

        ``carrier`` signs the transactions (the client itself, or the relay that got
        the packages); their authority is each client's own signature. A package already
        pooled, or older than its client's pooled one, is left out (the newest counts).
        The parameters must already be in the model store (:meth:`put_model`).
        """
        def pending() -> list[PooledPackage]:
            pool = self.state().pool  # one replay for all the packages
            return [p for p in packages if not superseded(p, pool)]

        todo = pending()
        if todo:
            self._append_transactions([pool_transaction(todo, carrier)], lambda: not pending(),
                                      "could not pool the packages")

    def _append_transactions(self, txs: list[Transaction], done: Callable[[], bool], what: str) -> None:
        for _ in range(20):  # another process may append between reading the head and writing
            if done():
                return
            block = build_block(self.latest(), {"transactions": txs}, self._producer)
            try:
                self.append(block)
                return
            except LedgerError:
                if self.latest().hash == block.last_hash:
                    raise  # refused on its merits, not because the head moved
        raise LedgerError(f"{what}: the chain kept moving")

    @functools.cached_property
    def _producer(self) -> SigningKey:
        # Signs the blocks this ledger object writes for enrolments; their authority is
        # the enrolment transaction inside, not this key.
        return SigningKey.generate()

    def identity(self, client_id: str) -> str | None:
        """The enrolled public key of ``client_id``, or ``None``."""
        return self.state().key(client_id)

    def identities(self) -> dict[str, dict[str, Any]]:
        """``client_id -> {"public_key", "role", "stake", "taken_part", "enrolled_at"}`` for every identity."""
        return identity_records(self.state())

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
