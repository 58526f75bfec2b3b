"""The operations a ledger cluster orders with PBFT, and how every node executes them.

A PBFT request's ``value`` is one operation as compact JSON:

* ``{"op": "block", "block": {...}}``: append a block (built and signed by a client,
  e.g. the BCSFL strategy, or by the primary from a batch of signed transactions);
* ``{"op": "model", "data": "<base64>"}``: store model bytes in the content store;
* ``{"op": "identity", "client_id": ..., "public_key": ..., "role": ...}``: register
  a client key;
* ``{"op": "ping", "from": node, "nonce": ...}``: nothing (a node checks that the
  primary still orders requests).

Execution (:func:`apply_op`) is a deterministic function of the ledger's state, so
every correct node that executes the same sequence reaches the same chain. A block
must pass :func:`~bcsfl_flower.ledger.rules.check_append` (hash, producer signature,
every transaction's hash and Ed25519 signature, link to the head, referenced models
stored) on *every* node; one that does not is rejected on every node alike, with the
same reason. Execution is also idempotent, which is what crash recovery relies on: a
node that restarts replays committed operations from its peers, and a block it
already holds (same hash at the same height) or a model or identity it already has
is a no-op.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

from .base import Ledger
from .block import Block, LedgerError, parse_json
from .memory import validate_identity

__all__ = [
    "Op",
    "apply_op",
    "encode_block_op",
    "encode_identity_op",
    "encode_model_op",
    "encode_ping_op",
    "parse_op",
]

DEFAULT_MAX_MODEL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Op:
    """A parsed operation (exactly one of ``block``, ``data``, ``identity`` is set)."""

    kind: str
    block: Block | None = None
    data: bytes | None = None
    identity: tuple[str, str, str] | None = None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def encode_block_op(block: Block) -> str:
    """The request value that appends ``block``."""
    # The block's canonical data text, which building the block (or checking its hash)
    # already made, goes in as is: a batch of transactions is not encoded twice.
    fields = (block.hash, block.last_hash, block.timestamp)
    tail = (block.public, block.sign, block.sequence_no)
    return ('{"op":"block","block":{"hash":%s,"lastHash":%s,"timestamp":%s,"data":%s,'
            '"public":%s,"sign":%s,"sequenceNo":%s}}'
            % (*map(_dumps, fields), block.canonical_data, *map(_dumps, tail)))


def encode_model_op(data: bytes) -> str:
    """The request value that stores ``data`` in the model store."""
    return _dumps({"op": "model", "data": base64.b64encode(data).decode("ascii")})


def encode_identity_op(client_id: str, public_key: str, role: str = "client") -> str:
    """The request value that registers ``client_id -> public_key``."""
    return _dumps(
        {"op": "identity", "client_id": client_id, "public_key": public_key, "role": role}
    )


def encode_ping_op(node: int) -> str:
    """A no-op request from node ``node`` (unique, so never de-duplicated away)."""
    return _dumps({"op": "ping", "from": node, "nonce": uuid.uuid4().hex})


def parse_op(value: str, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Op:
    """Parse and structurally check one request value.

    Parameters
    ----------
    value : str
        The JSON text of the operation.
    max_model_bytes : int (default: 16 MiB)
        Largest model a ``model`` operation may carry.

    Returns
    -------
    Op
        The operation. Signatures are not checked here (execution does that).

    Raises
    ------
    LedgerError
        If the value is not a well-formed operation; the message says why.
    """
    obj = parse_json(value)
    if not isinstance(obj, dict):
        raise LedgerError("operation must be a JSON object")
    kind = obj.get("op")
    if kind == "block":
        _keys(obj, {"op", "block"})
        block = Block.from_json(obj["block"], copy=False)
        if block.sequence_no < 1:
            raise LedgerError("sequenceNo must be at least 1 (genesis is fixed)")
        return Op("block", block=block)
    if kind == "model":
        _keys(obj, {"op", "data"})
        text = obj["data"]
        if not isinstance(text, str) or len(text) > (max_model_bytes + 2) // 3 * 4:
            raise LedgerError(f"model data must be base64 of at most {max_model_bytes} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise LedgerError(f"model data is not base64: {err}") from err
        return Op("model", data=data)
    if kind == "identity":
        _keys(obj, {"op", "client_id", "public_key", "role"})
        cid, key, role = obj["client_id"], obj["public_key"], obj["role"]
        validate_identity(cid, key, role)
        for text in (cid, role):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise LedgerError("client_id and role must be valid Unicode text") from None
        return Op("identity", identity=(cid, key, role))
    if kind == "ping":
        _keys(obj, {"op", "from", "nonce"})
        return Op("ping")
    raise LedgerError(f"unknown operation {kind!r}")


def _keys(obj: dict[str, Any], keys: set[str]) -> None:
    if set(obj) != keys:
        raise LedgerError(f"operation fields must be {sorted(keys)}, got {sorted(obj)}")


def apply_op(ledger: Ledger, op: Op, head_seq: int | None = None) -> dict[str, Any]:
    """Execute one committed operation on ``ledger``.

    Parameters
    ----------
    ledger : Ledger
        The node's local ledger.
    op : Op
        A parsed operation.
    head_seq : int | None (default: None)
        The head's ``sequenceNo`` if the caller knows it (saves parsing the head).

    Returns
    -------
    dict[str, Any]
        ``{"ok": True, ...}`` with what was written, or ``{"ok": False, "reason": ...}``
        when the operation is refused. The outcome is the same on every node that
        executed the same operations before.

    Raises
    ------
    sqlite3.Error | OSError
        Storage failures propagate: the node must stop rather than diverge.
    """
    if op.kind == "block":
        assert op.block is not None
        return _apply_block(ledger, op.block, head_seq)
    if op.kind == "model":
        assert op.data is not None
        return {"ok": True, "hash": ledger.put_model(op.data), "size": len(op.data)}
    if op.kind == "identity":
        assert op.identity is not None
        cid, key, role = op.identity
        try:
            ledger.register_identity(cid, key, role)
        except LedgerError as err:
            return {"ok": False, "reason": str(err)}
        return {"ok": True, "client_id": cid}
    if op.kind == "ping":
        return {"ok": True}
    return {"ok": False, "reason": f"unknown operation {op.kind!r}"}


def _apply_block(ledger: Ledger, block: Block, head_seq: int | None) -> dict[str, Any]:
    if head_seq is None:
        head_seq = ledger.latest().sequence_no
    if block.sequence_no <= head_seq:
        stored = ledger.block(block.sequence_no)
        if stored.hash == block.hash:
            return {"ok": True, "sequenceNo": block.sequence_no, "hash": block.hash,
                    "duplicate": True}
        return {"ok": False, "reason": f"block {block.sequence_no} is already committed "
                f"with another hash (head is {head_seq})"}
    try:
        ledger.append(block)
    except LedgerError as err:
        return {"ok": False, "reason": str(err)}
    return {"ok": True, "sequenceNo": block.sequence_no, "hash": block.hash}
