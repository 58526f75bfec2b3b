"""An in-process ledger (tests, simulations that need no persistence)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from bcsfl_flower.crypto import sha256_hex
from bcsfl_flower.federation import FederationState

from .base import Ledger
from .block import GENESIS, Block, BlockRow, LedgerError
from .replay import advance, genesis_replay
from .upload import check_model_size

__all__ = ["MemoryLedger"]


class MemoryLedger(Ledger):
    """A ledger held in memory; rows are stored in their canonical form, as in SQLite."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._rows: list[BlockRow] = [GENESIS.to_row()]
        self._models: dict[str, bytes] = {}
        self._replay = genesis_replay()

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
            after = advance(self._replay, block, self.has_model)
            row = block.to_row()
            Block.from_row(row)  # the stored form must parse back
            self._rows.append(row)
            self._replay = after

    def state(self) -> FederationState:
        with self._lock:
            return self._replay.state

    # -- model store ---------------------------------------------------------------
    def put_model(self, data: bytes, digest: str | None = None) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("put_model expects bytes")
        data = bytes(data)
        check_model_size(self.state(), len(data))
        digest = digest or sha256_hex(data)
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

    # -- raw access ----------------------------------------------------------------
    def block_rows(self) -> Iterator[BlockRow]:
        with self._lock:
            rows = list(self._rows)
        yield from rows
