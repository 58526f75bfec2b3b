"""The embedded, crash-safe ledger: one SQLite file in WAL mode.

Each ``append`` runs in one ``BEGIN IMMEDIATE`` transaction that re-reads the head,
validates the block and writes it, so concurrent writers (threads or processes) can
never fork the chain. The federation state (identities, stakes) is replayed from the
blocks (from the last replay point, below, when the file is opened for writing), and
blocks another process appended are checked against the rules before this one relies on them. Tamper evidence comes from ``verify_chain``, not from triggers.

Exactly once: the id of every transaction on the chain is also a row of the ``txs``
table (``id`` -> the ``sequence_no`` of its block), written in the same SQLite
transaction as its block. Its primary key makes a second entry of one transaction
impossible: ``append`` refuses a block holding an id already on the chain, on every
node alike (their chains are the same), and :meth:`SqliteLedger.committed` tells a
node, even one just restarted, which block a re-sent transaction is in. A file written
before the table existed gets it filled from its blocks when first opened for writing.

A ledger node also keeps a few values of its own in the ``meta`` table (``key`` ->
text): its last stable PBFT checkpoint (:mod:`~.snapshot`), so that a restarted node
resumes from its own file instead of from sequence number 1, and a replay point
(:mod:`~.resume`): the state after a block, saved every ``POINT_TXS`` transactions with
the block that completes them, from which opening the file for writing replays only the
blocks above it (a file opened read-only is replayed from genesis).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bcsfl_flower.crypto import sha256_hex

from bcsfl_flower.federation import FederationState

from .base import Ledger
from .block import GENESIS, Block, BlockRow, LedgerError
from .replay import Replay, advance, genesis_replay
from .resume import META_KEY as _POINT_KEY
from .resume import decode_point, due, encode_point
from .upload import check_model_size

__all__ = ["SqliteLedger"]

_SCHEMA = """
CREATE TABLE blocks (
    sequence_no INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    last_hash TEXT NOT NULL,
    timestamp REAL NOT NULL,
    data TEXT NOT NULL,
    public TEXT NOT NULL,
    sign TEXT NOT NULL
);
CREATE TABLE models (hash TEXT PRIMARY KEY, data BLOB NOT NULL);
"""
_TXS_SCHEMA = "CREATE TABLE IF NOT EXISTS txs (id TEXT PRIMARY KEY, sequence_no INTEGER NOT NULL) WITHOUT ROWID"
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
_LOOKUP_CHUNK = 500  # ids per ``IN (...)`` query (SQLite's variable limit)
_COLUMNS = "sequence_no, hash, last_hash, timestamp, data, public, sign"
_BUSY_TIMEOUT_S = 30.0
_CACHE_KIB = 16384  # page cache of a writing connection
_WAL_CHECKPOINT_PAGES = 10_000  # WAL pages (4 KiB) between automatic checkpoints


def _put_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(_META_SCHEMA)  # made on first use: a plain ledger file has no such table
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


_SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file_kind(path: str | Path) -> str:
    """``"empty"``, ``"sqlite"`` or ``"other"``, from the file's first bytes (read, never written).

    Raises ``OSError`` when the file cannot be read.
    """
    with open(path, "rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    return "empty" if not header else "sqlite" if header == _SQLITE_HEADER else "other"


class SqliteLedger(Ledger):
    """A ledger stored in one SQLite file.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The database file; created (with the genesis block) if absent.
    create : bool (default: True)
        If False, a missing file raises ``FileNotFoundError`` (and a database without
        ledger tables ``LedgerError``) instead of being created.
    timeout : float (default: 30.0)
        Seconds to wait for another process's write lock.
    read_only : bool (default: False)
        Open the file read-only (``ledger verify``/``show``): nothing is written to it,
        not even the journal mode, and writes raise ``sqlite3.OperationalError``.
        Implies ``create=False``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        create: bool = True,
        timeout: float = _BUSY_TIMEOUT_S,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not self.path.exists():
            if not create or read_only:
                raise FileNotFoundError(f"no ledger at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._replay: Replay = genesis_replay()
        self._unsaved = (0, 0)  # blocks and transactions above the last replay point
        target, uri = (self.path.resolve().as_uri() + "?mode=ro", True) if read_only else (str(self.path), False)
        self._conn = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False,
                                     uri=uri)
        try:
            if read_only:
                self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                if not self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='blocks'"):
                    raise LedgerError(f"{self.path} is not a ledger (no blocks table)")
            else:
                self._setup(timeout, create)
                self._replay = self._resume_point(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, timeout: float, create: bool) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        deadline = time.monotonic() + timeout
        while True:  # switching to WAL needs a moment without other writers
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise LedgerError(f"could not enable WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        # Every block inserts its transactions' random ids into the txs index: with the
        # default 2 MiB page cache and a checkpoint every 1,000 WAL pages, each block
        # re-read and re-wrote most of the index (a quarter less CPU in those writes here).
        conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        with self._write():
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='blocks'"
            ).fetchone()
            if exists is None:  # brand-new file: schema and genesis, nothing else
                if not create:
                    raise LedgerError(f"{self.path} is not a ledger (no blocks table)")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    f"INSERT INTO blocks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                    tuple(GENESIS.to_row()),
                )
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='txs'").fetchone() is None:
                conn.execute(_TXS_SCHEMA)  # a file from before the table: fill it from the blocks
                for seq, data in conn.execute("SELECT sequence_no, data FROM blocks ORDER BY sequence_no").fetchall():
                    ids = _tx_ids(_stored_txs(data))
                    conn.executemany("INSERT OR IGNORE INTO txs (id, sequence_no) VALUES (?, ?)",
                                     [(tx_id, seq) for tx_id in ids])

    class _Txn:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the lock."""

        def __init__(self, ledger: SqliteLedger) -> None:
            self.ledger = ledger

        def __enter__(self) -> sqlite3.Connection:
            self.ledger._lock.acquire()
            try:
                self.ledger._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.ledger._lock.release()
                raise
            return self.ledger._conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if exc_type is None:
                    self.ledger._conn.execute("COMMIT")
                else:
                    self.ledger._conn.execute("ROLLBACK")
            finally:
                self.ledger._lock.release()

    def _write(self) -> SqliteLedger._Txn:
        return SqliteLedger._Txn(self)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- chain ---------------------------------------------------------------------
    def _latest_row(self, conn: sqlite3.Connection) -> BlockRow:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM blocks ORDER BY sequence_no DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise LedgerError("ledger has no blocks (genesis missing)")
        return BlockRow(*row)

    def latest(self) -> Block:
        with self._lock:
            return Block.from_row(self._latest_row(self._conn))

    def block(self, seq: int) -> Block:
        rows = self._query(f"SELECT {_COLUMNS} FROM blocks WHERE sequence_no = ?", (seq,))
        if not rows:
            raise KeyError(seq)
        return Block.from_row(BlockRow(*rows[0]))

    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        sql = f"SELECT {_COLUMNS} FROM blocks WHERE sequence_no >= ?"
        params: tuple[Any, ...] = (start,)
        if end is not None:
            sql += " AND sequence_no < ?"
            params += (end,)
        rows = self._query(sql + " ORDER BY sequence_no", params)
        return [Block.from_row(BlockRow(*row)) for row in rows]

    def height(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM blocks")[0][0])

    def _resume_point(self, conn: sqlite3.Connection) -> Replay:
        """The replay point saved in the file if it names the stored block at its height, else genesis.

        Never for a file opened read-only: whoever audits a file re-checks all of it.
        """
        text = None if self.read_only else self.get_meta(_POINT_KEY)
        if text is None:
            return genesis_replay()
        try:
            seq, head, state = decode_point(text)
        except ValueError:  # another version's, or damaged: the blocks are the truth
            return genesis_replay()
        row = conn.execute(f"SELECT {_COLUMNS} FROM blocks WHERE sequence_no = ?", (seq,)).fetchone()
        if row is None or row[1] != head:  # the chain under the point was replaced (or cut)
            return genesis_replay()
        return Replay(state, Block.from_row(BlockRow(*row)))

    def _caught_up(self, conn: sqlite3.Connection) -> Replay:
        """The replay advanced over blocks written since this object last looked."""
        rep = self._replay
        stored = conn.execute("SELECT hash FROM blocks WHERE sequence_no = ?", (rep.head.sequence_no,)).fetchone()
        blocks, txs = self._unsaved
        if stored is None or stored[0] != rep.head.hash:
            rep, blocks, txs = self._resume_point(conn), 0, 0  # the file changed under us: re-check it from its point
        rows = conn.execute(f"SELECT {_COLUMNS} FROM blocks WHERE sequence_no > ? ORDER BY sequence_no",
                            (rep.head.sequence_no,)).fetchall()
        for row in rows:
            try:
                block = Block.from_row(BlockRow(*row))
                rep = advance(rep, block)
            except LedgerError as err:  # written past the rules (by hand, or by an older version)
                raise LedgerError(f"stored block {row[0]}: {err}") from None
            blocks, txs = blocks + 1, txs + len(block.transactions)
        self._replay, self._unsaved = rep, (blocks, txs)
        return rep

    def state(self) -> FederationState:
        with self._lock:
            return self._caught_up(self._conn).state

    def append(self, block: Block) -> None:
        if not isinstance(block, Block):
            raise LedgerError("append expects a Block")
        with self._write() as conn:
            rep = advance(self._caught_up(conn), block, lambda d: self._has_model(conn, d))
            try:
                conn.execute(
                    f"INSERT INTO blocks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                    tuple(block.to_row()),
                )
            except sqlite3.IntegrityError as err:
                raise LedgerError(f"block conflicts with a stored block: {err}") from err
            ids = _tx_ids(block.transactions)
            try:
                conn.executemany("INSERT INTO txs (id, sequence_no) VALUES (?, ?)",
                                 [(tx_id, block.sequence_no) for tx_id in ids])
            except sqlite3.IntegrityError:  # rolled back with the block
                # Rows this very insert wrote are not yet rolled back: name one from an earlier block.
                seen = {i: seq for i, seq in self._committed(conn, ids).items() if seq != block.sequence_no}
                tx_id = next(iter(seen), "?")
                raise LedgerError(f"transaction {tx_id} is already committed in block "
                                  f"{seen.get(tx_id, '?')}") from None
            blocks, txs = self._unsaved[0] + 1, self._unsaved[1] + len(ids)
            if due(blocks, txs):  # with the block it follows: a point never names a block not in the file
                _put_meta(conn, _POINT_KEY, encode_point(rep))
                blocks, txs = 0, 0
        self._replay, self._unsaved = rep, (blocks, txs)

    def committed(self, ids: Iterable[str]) -> dict[str, int]:
        """Of the transaction ids ``ids``, those on the chain: ``id -> sequenceNo`` of their block."""
        with self._lock:
            return self._committed(self._conn, list(ids))

    def _committed(self, conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        if not ids:
            return found
        if self.read_only and not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='txs'").fetchone():
            wanted = set(ids)  # a file from before the table, opened read-only: read the blocks
            for row in conn.execute("SELECT sequence_no, data FROM blocks ORDER BY sequence_no").fetchall():
                for tx_id in _tx_ids(_stored_txs(row[1])):
                    if tx_id in wanted:
                        found.setdefault(tx_id, int(row[0]))
            return found
        for i in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[i:i + _LOOKUP_CHUNK]
            found.update(conn.execute(
                f"SELECT id, sequence_no FROM txs WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    # -- model store ---------------------------------------------------------------
    @staticmethod
    def _has_model(conn: sqlite3.Connection, digest: str) -> bool:
        found = conn.execute("SELECT 1 FROM models WHERE hash = ?", (digest,)).fetchone()
        return found is not None

    def put_model(self, data: bytes, digest: str | None = None) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("put_model expects bytes")
        data = bytes(data)
        check_model_size(self.state(), len(data))
        digest = digest or sha256_hex(data)
        if self.has_model(digest):
            return digest
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO models (hash, data) VALUES (?, ?)",
                (digest, sqlite3.Binary(data)),
            )
        return digest

    def has_model(self, digest: str) -> bool:
        with self._lock:
            return self._has_model(self._conn, digest)

    def read_model_raw(self, digest: str) -> bytes:
        rows = self._query("SELECT data FROM models WHERE hash = ?", (digest,))
        if not rows:
            raise KeyError(digest)
        data = rows[0][0]
        return data if isinstance(data, bytes) else str(data).encode("utf-8")

    def model_digests(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT hash FROM models ORDER BY hash")]

    # -- node metadata ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key`` in the ``meta`` table (None: none, or no table)."""
        with self._lock:
            if not self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
                return None  # no checkpoint was ever written to this file (opened read-only)
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing it), durably, in one SQLite transaction."""
        with self._write() as conn:
            _put_meta(conn, key, value)

    # -- raw access ----------------------------------------------------------------
    def block_rows(self) -> Iterator[BlockRow]:
        rows = self._query(f"SELECT {_COLUMNS} FROM blocks ORDER BY sequence_no")
        for row in rows:
            yield BlockRow(*row)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"


def _stored_txs(text: Any) -> list[Any]:
    """``data.transactions`` of a stored block's data column ([] if it has none or is unreadable)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return []
    txs = data.get("transactions") if isinstance(data, dict) else None
    return txs if isinstance(txs, list) else []


def _tx_ids(txs: list[Any]) -> list[str]:
    """The ids of a block's transactions (JSON objects); a stored block's are strings."""
    return [tx["id"] for tx in txs if isinstance(tx, dict) and isinstance(tx.get("id"), str)]
