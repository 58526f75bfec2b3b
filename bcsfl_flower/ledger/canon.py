"""Canonical JSON of ledger records, and the hashes computed over it.

Canonical JSON is sorted keys, no spaces, ASCII (non-ASCII escaped), finite numbers
only: equal values always give equal bytes. A transaction's hash is the SHA-256 of the
canonical JSON of ``{"data", "id", "public", "timestamp"}``, a block's of
``{"data", "lastHash", "public", "sequenceNo", "timestamp"}``.

Every node encodes every transaction of every block (the block's data for its hash and
its stored row, each transaction's data for the transaction's hash), so
:func:`encode_block_data` does both at once for a block of transactions: each
transaction's ``data`` is encoded once, and its canonical text goes into both.
"""

from __future__ import annotations

import hashlib
import json
import math
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

__all__ = [
    "LedgerError", "canonical_json", "encode_block_data", "hash_block_body", "parse_json",
    "transaction_hash",
]


class LedgerError(Exception):
    """A block, transaction or stored record is invalid; ``str(err)`` is the reason."""


def _reject_constant(name: str) -> Any:
    raise LedgerError(f"non-finite number {name} in JSON")


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_TX_FIELDS = frozenset(("id", "public", "data", "timestamp", "hash", "sign"))
_float_repr = float.__repr__
_int_repr = int.__repr__


def _c_encoder() -> Any:
    # The C encoder that json.dumps builds on every call, built directly: a ledger node
    # encodes every transaction of every block, and the per-call set-up was a third of it.
    return c_make_encoder({}, _ENCODER.default, encode_basestring_ascii, None, ":", ",", True, False, False)


def _encode(obj: Any) -> str:
    if c_make_encoder is None:
        return _ENCODER.encode(obj)
    return "".join(_c_encoder()(obj, 0))


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` as canonical JSON (sorted keys, no spaces, ASCII) in UTF-8.

    Parameters
    ----------
    obj : Any
        A JSON-serialisable value (dicts, lists, str, int, finite float, bool, None).

    Returns
    -------
    bytes
        The canonical encoding; equal values always give equal bytes.
    """
    try:
        text = _encode(obj)
    except (TypeError, ValueError) as err:
        raise LedgerError(f"not canonical-JSON serialisable: {err}") from err
    return text.encode("utf-8")


def parse_json(text: str | bytes) -> Any:
    """Parse JSON strictly (NaN/Infinity rejected); raises ``LedgerError``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        return _DECODER.decode(text)
    except (ValueError, TypeError) as err:
        raise LedgerError(f"invalid JSON: {err}") from err


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def transaction_hash(tx_id: str, public: str, data: dict[str, Any], timestamp: float) -> str:
    """SHA-256 hex of the canonical JSON of a transaction's signed fields.

    The body is ``{"data", "id", "public", "timestamp"}`` as canonical JSON.
    """
    ts = float(timestamp)
    if not (isinstance(tx_id, str) and isinstance(public, str) and math.isfinite(ts)):
        # the general encoder names what is wrong
        body = canonical_json({"id": tx_id, "public": public, "data": data, "timestamp": ts})
        return hashlib.sha256(body).hexdigest()
    data_text = canonical_json(data).decode("ascii")
    # Spliced in sorted key order: every node hashes every transaction of every block.
    return _sha256_hex('{"data":%s,"id":%s,"public":%s,"timestamp":%s}' % (
        data_text, encode_basestring_ascii(tx_id), encode_basestring_ascii(public), _float_repr(ts)))


def hash_block_body(sequence_no: int, timestamp: float, last_hash: str, data_text: str, public: str) -> str:
    """SHA-256 hex of a block's hashed fields, given its data's canonical text.

    The canonical JSON of ``{"data", "lastHash", "public", "sequenceNo", "timestamp"}``,
    spliced around ``data_text`` (keys in sorted order), so a block whose data is
    already encoded is not encoded again.
    """
    try:
        fields = [json.dumps(x, ensure_ascii=True, allow_nan=False)
                  for x in (last_hash, public, sequence_no, float(timestamp))]
    except (TypeError, ValueError) as err:
        raise LedgerError(f"not canonical-JSON serialisable: {err}") from err
    body = ('{"data":%s,"lastHash":%s,"public":%s,"sequenceNo":%s,"timestamp":%s}'
            % (data_text, *fields))
    return _sha256_hex(body)


def _encode_transactions(txs: list[Any]) -> tuple[str, tuple[str, ...]] | None:
    """``{"transactions": txs}`` as canonical text, and each transaction's recomputed hash.

    Only for the plain shape every batch block has (each transaction a JSON object
    with exactly the six fields, strings, a finite number and an object where they
    belong); ``None`` for anything else, which the general encoder then handles (and
    names what is wrong).
    """
    enc = _c_encoder()
    esc = encode_basestring_ascii
    parts: list[str] = []
    hashes: list[str] = []
    for tx in txs:
        if type(tx) is not dict or tx.keys() != _TX_FIELDS:
            return None
        tx_id, public, data, ts = tx["id"], tx["public"], tx["data"], tx["timestamp"]
        digest, sign = tx["hash"], tx["sign"]
        if not (type(tx_id) is str and type(public) is str and type(digest) is str
                and type(sign) is str and type(data) is dict):
            return None
        if type(ts) is float:
            if not math.isfinite(ts):
                return None
            ts_text = hash_ts = _float_repr(ts)
        elif type(ts) is int and -(2 ** 53) <= ts <= 2 ** 53:
            ts_text, hash_ts = _int_repr(ts), _float_repr(float(ts))
        else:
            return None
        data_text = "".join(enc(data, 0))
        id_text, public_text = esc(tx_id), esc(public)
        hashes.append(_sha256_hex('{"data":%s,"id":%s,"public":%s,"timestamp":%s}'
                                  % (data_text, id_text, public_text, hash_ts)))
        parts.append('{"data":%s,"hash":%s,"id":%s,"public":%s,"sign":%s,"timestamp":%s}'
                     % (data_text, esc(digest), id_text, public_text, esc(sign), ts_text))
    return '{"transactions":[' + ",".join(parts) + "]}", tuple(hashes)


def encode_block_data(data: Any) -> tuple[str, tuple[str, ...] | None]:
    """A block's ``data`` as canonical JSON text, and its transactions' recomputed hashes.

    The hashes (in order, what :func:`transaction_hash` gives for each transaction's
    fields) come with a block of transactions of the plain shape, from the same
    encoding of each transaction's ``data`` as the text; ``None`` otherwise (any other
    block data, or a transaction of another shape: the caller checks those one by one).

    Raises
    ------
    LedgerError
        If ``data`` is not canonical-JSON serialisable.
    """
    if type(data) is dict and len(data) == 1 and type(data.get("transactions")) is list \
            and c_make_encoder is not None:
        try:
            done = _encode_transactions(data["transactions"])
        except (TypeError, ValueError):
            done = None  # the general encoder says what is wrong
        if done is not None:
            return done
    return canonical_json(data).decode("ascii"), None
