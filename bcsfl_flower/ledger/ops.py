"""The operations a ledger cluster orders with PBFT, and how every node executes them.

A PBFT request's ``value`` is one operation as compact JSON:

* ``{"op": "block", "block": {...}}``: append a block (a certified round block from
  the federation's relay, or the primary's block of signed transactions; enrolments
  travel as the enrolment authority's signed transactions in such blocks);
* ``{"op": "model", "data": "<base64>", "client": id, "sign": hex}``: store model
  bytes in the content store, uploaded by the enrolled identity ``client`` whose
  signature ``sign`` covers them (:mod:`~.upload`);
* ``{"op": "ping", "from": node, "nonce": ...}``: nothing (a node checks that the
  primary still orders requests).

Execution (:func:`apply_op`) is a deterministic function of the ledger's state, so
every correct node that executes the same sequence reaches the same chain. A block
must pass ``Ledger.append`` on *every* node: its structure
(:func:`~bcsfl_flower.ledger.rules.check_append`: hash, producer signature, every
transaction's hash and Ed25519 signature, link to the head, referenced models stored)
and the federation's rules against the state before it (enrolments by the authority,
transactions from enrolled keys, round certificates, stakes). An upload's authority
is checked against the chain state at its place in the order. What fails is refused
on every node alike, with the same reason; so is a block holding a transaction that is
already on the chain (every node's file records committed transaction ids with their
blocks, :mod:`~.sqlite`), so no transaction commits twice. Execution is also idempotent, which is
what crash recovery relies on: a node that restarts replays committed operations from
its peers, and a block it already holds (same hash at the same height) or a model it
already has is a no-op.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

from bcsfl_flower.crypto import sha256_hex

from .base import Ledger
from .block import Block, LedgerError, parse_json
from .upload import check_upload

__all__ = [
    "Op",
    "apply_op",
    "encode_block_op",
    "encode_model_op",
    "encode_ping_op",
    "parse_op",
]

DEFAULT_MAX_MODEL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Op:
    """A parsed operation: ``block`` for a block, ``data`` and ``uploader`` for a model."""

    kind: str
    block: Block | None = None
    data: bytes | None = None
    uploader: tuple[str, str] | None = None  # (client id, upload signature hex)


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


def encode_model_op(data: bytes, client: str, sign: str) -> str:
    """The request value that stores ``data``, uploaded by ``client`` with signature ``sign``."""
    return _dumps({"op": "model", "data": base64.b64encode(data).decode("ascii"), "client": client,
                   "sign": sign})


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
        _keys(obj, {"op", "data", "client", "sign"})
        text, client, sign = obj["data"], obj["client"], obj["sign"]
        if not isinstance(text, str) or len(text) > (max_model_bytes + 2) // 3 * 4:
            raise LedgerError(f"model data must be base64 of at most {max_model_bytes} bytes")
        if not isinstance(client, str) or not isinstance(sign, str):
            raise LedgerError("model client and sign must be strings")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise LedgerError(f"model data is not base64: {err}") from err
        return Op("model", data=data, uploader=(client, sign))
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
        assert op.data is not None and op.uploader is not None
        try:  # judged against the chain at this point of the order: the same on every node
            check_upload(ledger.state(), *op.uploader, sha256_hex(op.data))
            digest = ledger.put_model(op.data)  # refuses a model over the charter's size
        except LedgerError as err:
            return {"ok": False, "reason": str(err)}
        return {"ok": True, "hash": digest, "size": len(op.data)}
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
