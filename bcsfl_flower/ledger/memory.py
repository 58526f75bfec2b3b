"""An in-process ledger (tests, simulations that need no persistence)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from bcsfl_flower.crypto import sha256_hex

from .base import Ledger
from .block import GENESIS, Block, BlockRow, LedgerError
from .rules import check_append, check_identities, is_digest

__all__ = ["MemoryLedger", "validate_identity"]


def validate_identity(client_id: Any, public_key: Any, role: Any) -> None:
    """Reject malformed identity registrations with ``LedgerError``."""
    if not isinstance(client_id, str) or not client_id:
        raise LedgerError("client_id must be a non-empty string")
    if not is_digest(public_key):
        raise LedgerError(f"identity {client_id!r}: public key is not 64-char lowercase hex")
    if not isinstance(role, str) or not role:
        raise LedgerError("role must be a non-empty string")


def block_identities(block: Block) -> dict[str, str]:
    """``data["identities"]`` of ``block`` (empty if absent)."""
    idents = block.data.get("identities")
    return dict(idents) if isinstance(idents, dict) else {}


class MemoryLedger(Ledger):
    """A ledger held in memory; rows are stored in their canonical form, as in SQLite."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._rows: list[BlockRow] = [GENESIS.to_row()]
        self._models: dict[str, bytes] = {}
        self._identities: dict[str, dict[str, Any]] = {}

    # -- chain ---------------------------------------------------------------------
    def latest(self) -> Block:
        with self._lock:
            return Block.from_row(self._rows[-1])

    def block(self, seq: int) -> Block:
        with self._lock:
            if isinstance(seq, bool) or not isinstance(seq, int) or not (
                0 <= seq < len(self._rows)
            ):
                raise KeyError(seq)
            return Block.from_row(self._rows[seq])

    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        with self._lock:
            rows = self._rows[max(start, 0) : end if end is None else max(end, 0)]
        return [Block.from_row(row) for row in rows]

    def height(self) -> int:
        with self._lock:
            return len(self._rows)

    def append(self, block: Block) -> None:
        if not isinstance(block, Block):
            raise LedgerError("append expects a Block")
        with self._lock:
            prev = Block.from_row(self._rows[-1])
            check_append(prev, block, self.has_model)
            known = {cid: rec["public_key"] for cid, rec in self._identities.items()}
            check_identities(block, known)
            row = block.to_row()
            Block.from_row(row)  # the stored form must parse back
            self._rows.append(row)
            for cid, key in block_identities(block).items():
                self._identities.setdefault(
                    cid,
                    {"public_key": key, "role": "client", "registered_at": block.timestamp},
                )

    # -- model store ---------------------------------------------------------------
    def put_model(self, data: bytes) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("put_model expects bytes")
        data = bytes(data)
        digest = sha256_hex(data)
        with self._lock:
            self._models.setdefault(digest, data)
        return digest

    def has_model(self, digest: str) -> bool:
        with self._lock:
            return digest in self._models

    def read_model_raw(self, digest: str) -> bytes:
        with self._lock:
            return self._models[digest]

    def model_digests(self) -> list[str]:
        with self._lock:
            return list(self._models)

    # -- identities ----------------------------------------------------------------
    def register_identity(
        self, client_id: str, public_key: str, role: str = "client"
    ) -> None:
        validate_identity(client_id, public_key, role)
        with self._lock:
            known = self._identities.get(client_id)
            if known is not None:
                if known["public_key"] != public_key:
                    raise LedgerError(
                        f"identity {client_id!r} is already registered with another key"
                    )
                return
            self._identities[client_id] = {
                "public_key": public_key,
                "role": role,
                "registered_at": time.time(),
            }

    def identity(self, client_id: str) -> str | None:
        with self._lock:
            rec = self._identities.get(client_id)
            return None if rec is None else str(rec["public_key"])

    def identities(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {cid: dict(rec) for cid, rec in self._identities.items()}

    # -- raw access ----------------------------------------------------------------
    def block_rows(self) -> Iterator[BlockRow]:
        with self._lock:
            rows = list(self._rows)
        yield from rows
