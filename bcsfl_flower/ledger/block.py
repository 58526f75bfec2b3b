"""Ledger records: blocks, transactions, canonical JSON and the genesis block.

The JSON field names follow the BCS-FL paper exactly (``hash``, ``lastHash``,
``timestamp``, ``data``, ``public``, ``sign``, ``sequenceNo``); the Python attributes
are snake_case, with ``sequenceNo``/``lastHash`` kept as read-only aliases.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from bcsfl_flower.crypto import SigningKey

from .canon import LedgerError, canonical_json, encode_block_data, hash_block_body, parse_json, transaction_hash

__all__ = [
    "GENESIS",
    "GENESIS_HASH",
    "Block",
    "BlockRow",
    "LedgerError",
    "Transaction",
    "block_hash",
    "build_block",
    "canonical_json",
    "make_transaction",
    "transaction_hash",
]

GENESIS_HASH = "genesis-hash"
_BLOCK_KEYS = ("hash", "lastHash", "timestamp", "data", "public", "sign", "sequenceNo")
_TX_KEYS = ("id", "public", "data", "timestamp", "hash", "sign")
_TX_FIELDS = frozenset(_TX_KEYS)


def _normalise(obj: Any) -> Any:
    """Round-trip ``obj`` through canonical JSON (deep copy with JSON types only)."""
    return parse_json(canonical_json(obj))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerError(f"{what} must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise LedgerError(f"{what} must be finite")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise LedgerError(f"{what} must be a string")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LedgerError(f"{what} must be a JSON object")
    return value


def _exact_keys(obj: Any, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    obj = _object(obj, what)
    missing = [k for k in keys if k not in obj]
    extra = sorted(set(obj) - set(keys))
    if missing or extra:
        raise LedgerError(f"{what} fields: missing {missing}, unexpected {extra}")
    return obj


def block_hash(
    sequence_no: int, timestamp: float, last_hash: str, data: dict[str, Any], public: str
) -> str:
    """SHA-256 hex of the canonical JSON of a block's hashed fields.

    The body is ``{"data", "lastHash", "public", "sequenceNo", "timestamp"}`` as
    canonical JSON.
    """
    data_text = canonical_json(data).decode("ascii")
    return hash_block_body(sequence_no, timestamp, last_hash, data_text, public)


@dataclass(frozen=True)
class Transaction:
    """A signed transaction: a client's model submission (``data``: ``model-params``,
    ``model-acc``, ``num``) or the enrolment authority's enrolment (``data.enrol``)."""

    id: str
    public: str
    data: dict[str, Any]
    timestamp: float
    hash: str
    sign: str

    def expected_hash(self) -> str:
        """The hash recomputed from ``id``, ``public``, ``data`` and ``timestamp``."""
        return transaction_hash(self.id, self.public, self.data, self.timestamp)

    def to_json(self) -> dict[str, Any]:
        """The transaction as a JSON object with the paper's field names."""
        return {
            "id": self.id,
            "public": self.public,
            "data": self.data,
            "timestamp": self.timestamp,
            "hash": self.hash,
            "sign": self.sign,
        }

    @classmethod
    def from_json(cls, obj: Any, *, copy: bool = True) -> Transaction:
        """Parse a JSON object (as from ``to_json``); raises ``LedgerError`` if malformed.

        Parameters
        ----------
        obj : Any
            The transaction object.
        copy : bool (default: True)
            Deep-copy ``data`` through canonical JSON. ``False`` when ``obj`` came
            straight from a JSON parser and nothing else holds it (checking the hash
            still encodes ``data``, which refuses what JSON cannot encode).
        """
        if not copy and type(obj) is dict and obj.keys() == _TX_FIELDS:  # what a parser made
            tx_id, public, data, ts, digest, sign = (obj[k] for k in _TX_KEYS)
            if (type(tx_id) is str and type(public) is str and type(data) is dict and type(ts) is float
                    and type(digest) is str and type(sign) is str and math.isfinite(ts)):
                return cls(tx_id, public, data, ts, digest, sign)
        obj = _exact_keys(obj, _TX_KEYS, "transaction")
        data = _object(obj["data"], "transaction data")
        return cls(
            id=_string(obj["id"], "transaction id"),
            public=_string(obj["public"], "transaction public"),
            data=_normalise(data) if copy else data,
            timestamp=_number(obj["timestamp"], "transaction timestamp"),
            hash=_string(obj["hash"], "transaction hash"),
            sign=_string(obj["sign"], "transaction sign"),
        )


class BlockRow(NamedTuple):
    """A block exactly as stored: ``data`` is its canonical JSON text."""

    sequence_no: Any
    hash: Any
    last_hash: Any
    timestamp: Any
    data: Any
    public: Any
    sign: Any


@dataclass(frozen=True)
class Block:
    """One block of the chain; ``data`` is a JSON object (treat it as read-only)."""

    sequence_no: int
    hash: str
    last_hash: str
    timestamp: float
    data: dict[str, Any]
    public: str
    sign: str

    @property
    def sequenceNo(self) -> int:  # noqa: N802 - the paper's name
        """Alias of ``sequence_no``."""
        return self.sequence_no

    @property
    def lastHash(self) -> str:  # noqa: N802 - the paper's name
        """Alias of ``last_hash``."""
        return self.last_hash

    @property
    def transactions(self) -> list[dict[str, Any]]:
        """``data["transactions"]`` (JSON objects), or an empty list."""
        txs = self.data.get("transactions", [])
        return txs if isinstance(txs, list) else []

    @functools.cached_property
    def _encoded(self) -> tuple[str, tuple[str, ...] | None]:
        return encode_block_data(self.data)

    @property
    def canonical_data(self) -> str:
        """``data`` as canonical JSON text (encoded once: the hash and the row need it)."""
        return self._encoded[0]

    @property
    def tx_hashes(self) -> tuple[str, ...] | None:
        """Each transaction's hash recomputed from its fields, from the same encoding as
        :attr:`canonical_data` (``None`` unless ``data`` is a plain batch of transactions:
        see :func:`~.canon.encode_block_data`)."""
        return self._encoded[1]

    def expected_hash(self) -> str:
        """The hash recomputed from the block's hashed fields."""
        return hash_block_body(
            self.sequence_no, self.timestamp, self.last_hash, self.canonical_data, self.public
        )

    def to_json(self) -> dict[str, Any]:
        """The block as a JSON object with the paper's field names."""
        return {
            "hash": self.hash,
            "lastHash": self.last_hash,
            "timestamp": self.timestamp,
            "data": self.data,
            "public": self.public,
            "sign": self.sign,
            "sequenceNo": self.sequence_no,
        }

    @classmethod
    def from_json(cls, obj: Any, *, copy: bool = True) -> Block:
        """Parse a JSON object (as from ``to_json``); raises ``LedgerError`` if malformed.

        Parameters
        ----------
        obj : Any
            The block object.
        copy : bool (default: True)
            Deep-copy ``data`` through canonical JSON. ``False`` when ``obj`` came
            straight from a JSON parser and nothing else holds it: ``data`` is kept,
            and encoded once here (which refuses what JSON cannot encode, e.g. 1e999).
        """
        obj = _exact_keys(obj, _BLOCK_KEYS, "block")
        seq = obj["sequenceNo"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise LedgerError("sequenceNo must be an integer")
        data = _object(obj["data"], "data")
        block = cls(
            sequence_no=seq,
            hash=_string(obj["hash"], "hash"),
            last_hash=_string(obj["lastHash"], "lastHash"),
            timestamp=_number(obj["timestamp"], "timestamp"),
            data=_normalise(data) if copy else data,
            public=_string(obj["public"], "public"),
            sign=_string(obj["sign"], "sign"),
        )
        if not copy:
            _ = block.canonical_data  # refuses what JSON parsed but cannot encode
        return block

    def to_row(self) -> BlockRow:
        """The storage row of this block (``data`` as canonical JSON text)."""
        return BlockRow(
            self.sequence_no,
            self.hash,
            self.last_hash,
            float(self.timestamp),
            self.canonical_data,
            self.public,
            self.sign,
        )

    @classmethod
    def from_row(cls, row: BlockRow) -> Block:
        """Rebuild a block from a stored row, checking column types and canonical data.

        Raises
        ------
        LedgerError
            If a column has the wrong type or ``data`` is not canonical JSON text.
        """
        seq = row.sequence_no
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise LedgerError("stored sequence_no is not an integer")
        text = _string(row.data, "stored data")
        data = _object(parse_json(text), "stored data")
        encoded = encode_block_data(data)
        if encoded[0] != text:
            raise LedgerError("stored data is not canonical JSON")
        block = cls(
            sequence_no=seq,
            hash=_string(row.hash, "stored hash"),
            last_hash=_string(row.last_hash, "stored last_hash"),
            timestamp=_number(row.timestamp, "stored timestamp"),
            data=data,
            public=_string(row.public, "stored public"),
            sign=_string(row.sign, "stored sign"),
        )
        block.__dict__["_encoded"] = encoded  # just checked to be the stored text
        return block


GENESIS = Block(
    sequence_no=0,
    hash=GENESIS_HASH,
    last_hash="",
    timestamp=0.0,
    data={"chain": "bcsfl", "genesis": True},
    public="",
    sign="",
)
"""The genesis block, identical in every ledger."""


def make_transaction(
    key: SigningKey,
    data: dict[str, Any],
    timestamp: float | None = None,
    tx_id: str | None = None,
) -> Transaction:
    """Create and sign a transaction.

    Parameters
    ----------
    key : SigningKey
        The submitting client's key; its public key becomes ``public``.
    data : dict[str, Any]
        The payload, normally ``{"model-params": <sha256 hex>, "model-acc": float | None,
        "num": int}``.
    timestamp : float | None (default: None)
        Unix seconds; defaults to ``time.time()``.
    tx_id : str | None (default: None)
        Transaction id; defaults to a fresh uuid4 string.

    Returns
    -------
    Transaction
        The signed transaction.
    """
    tx_id = str(uuid.uuid4()) if tx_id is None else tx_id
    ts = _number(time.time() if timestamp is None else timestamp, "timestamp")
    body = _normalise(_object(data, "transaction data"))
    digest = transaction_hash(tx_id, key.public_hex, body, ts)
    signature = key.sign(bytes.fromhex(digest)).hex()
    return Transaction(tx_id, key.public_hex, body, ts, digest, signature)


def build_block(
    prev: Block, data: dict[str, Any], key: SigningKey, timestamp: float | None = None,
    *, copy: bool = True,
) -> Block:
    """Create and sign the block that follows ``prev``.

    Parameters
    ----------
    prev : Block
        The current chain head.
    data : dict[str, Any]
        The block payload. ``Transaction`` objects inside ``data["transactions"]`` are
        converted with ``to_json()``.
    key : SigningKey
        The producer's key; its public key becomes ``public``.
    timestamp : float | None (default: None)
        Unix seconds; defaults to ``time.time()`` raised to ``prev.timestamp`` if the
        clock is behind. An explicit value is used as given (``append`` rejects one
        earlier than ``prev.timestamp``).
    copy : bool (default: True)
        Deep-copy ``data`` through canonical JSON. ``False`` when it holds only values
        a JSON parser produced and nobody changes them afterwards (a batch of parsed
        transactions): it is then encoded once, for the hash.

    Returns
    -------
    Block
        The signed block with ``sequenceNo = prev.sequenceNo + 1``.
    """
    payload = dict(_object(data, "block data"))
    txs = payload.get("transactions")
    if isinstance(txs, (list, tuple)):
        payload["transactions"] = [
            t.to_json() if isinstance(t, Transaction) else t for t in txs
        ]
    if copy:
        payload = _normalise(payload)
    if timestamp is None:
        ts = max(time.time(), float(prev.timestamp))
    else:
        ts = _number(timestamp, "timestamp")
    seq = prev.sequence_no + 1
    encoded = encode_block_data(payload)
    digest = hash_block_body(seq, ts, prev.hash, encoded[0], key.public_hex)
    signature = key.sign(bytes.fromhex(digest)).hex()
    block = Block(seq, digest, prev.hash, ts, payload, key.public_hex, signature)
    block.__dict__["_encoded"] = encoded
    return block
