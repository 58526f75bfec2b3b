"""The operations a ledger cluster orders with PBFT, and how every node executes them.

A PBFT request's ``value`` is one operation as compact JSON:

* ``{"op": "block", "block": {...}}``: append a block (a certified round block from
  the federation's relay, or the primary's block of signed transactions; enrolments
  travel as the enrolment authority's signed transactions in such blocks);
* ``{"op": "model", "hash": sha256, "size": n, "client": id, "sign": hex,
  "receipts": [{"node": i, "sign": hex}, ...]}``: store the model whose bytes have that
  digest and size, uploaded by the enrolled identity ``client`` whose signature ``sign``
  covers them (:mod:`~.upload`), which f+1 replicas signed that they hold
  (:mod:`~.receipts`). The bytes never travel in consensus: they are staged on the
  nodes over HTTP before the operation is ordered, and a node that lacks them on
  execution fetches them from a signer (:mod:`~.executor`). An operation carrying the
  bytes inline (the earlier form) or over ``MAX_MODEL_OP`` characters is malformed, so
  no node, faulty or not, can push model bytes through consensus;
* ``{"op": "ping", "from": node, "nonce": ...}``: nothing (a node checks that the
  primary still orders requests).

Execution (:func:`apply_op`) is a deterministic function of the ledger's state, so
every correct node that executes the same sequence reaches the same chain. A block
must pass ``Ledger.append`` on *every* node: its structure
(:func:`~bcsfl_flower.ledger.rules.check_append`: hash, producer signature, every
transaction's hash and Ed25519 signature, link to the head, referenced models stored)
and the federation's rules against the state before it (enrolments by the authority,
transactions from enrolled keys, round certificates, stakes). An upload's authority
is checked against the chain state at its place in the order, with its receipts. What fails is refused
on every node alike, with the same reason; so is a block holding a transaction that is
already on the chain (every node's file records committed transaction ids with their
blocks, :mod:`~.sqlite`), so no transaction commits twice. Execution is also idempotent, which is
what crash recovery relies on: a node that restarts replays committed operations from
its peers, and a block it already holds (same hash at the same height) or a model it
already has is a no-op.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bcsfl_flower.federation import FederationState

from .base import Ledger
from .block import Block, LedgerError, parse_json
from .receipts import MAX_RECEIPTS, check_receipts
from .upload import check_model_size, check_upload

__all__ = [
    "MAX_MODEL_OP",
    "MissingModel",
    "ModelRef",
    "Op",
    "apply_op",
    "check_model_op",
    "encode_block_op",
    "encode_model_op",
    "encode_ping_op",
    "parse_op",
]

DEFAULT_MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MODEL_OP = 16 * 1024  # characters: a model operation names its bytes, it never carries them
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelRef:
    """What a ``model`` operation says: the bytes' digest and size, who uploaded them, who holds them.

    Parameters
    ----------
    hash : str
        SHA-256 hex digest of the model bytes.
    size : int
        Their length in bytes.
    client : str
        The enrolled identity that uploaded them.
    sign : str
        Its upload signature (hex, :func:`~.upload.upload_signature`).
    receipts : tuple[Any, ...]
        The replicas' storage receipts (:mod:`~.receipts`), as decoded.
    """

    hash: str
    size: int
    client: str
    sign: str
    receipts: tuple[Any, ...]


@dataclass(frozen=True)
class Op:
    """A parsed operation: ``block`` for a block, ``model`` for a model upload."""

    kind: str
    block: Block | None = None
    model: ModelRef | None = None


class MissingModel(LedgerError):
    """A valid ``model`` operation executed without its bytes at hand (the caller fetches them)."""


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


def encode_model_op(digest: str, size: int, client: str, sign: str, receipts: Sequence[Any]) -> str:
    """The request value that stores the model ``(digest, size)`` (its bytes are staged, not in it).

    Parameters
    ----------
    digest : str
        SHA-256 hex digest of the model bytes.
    size : int
        Their length in bytes.
    client : str
        The enrolled identity that uploaded them.
    sign : str
        Its upload signature (hex).
    receipts : Sequence[Any]
        f+1 or more replicas' storage receipts (:func:`~.receipts.make_receipt`).
    """
    return _dumps({"op": "model", "hash": digest, "size": size, "client": client, "sign": sign,
                   "receipts": list(receipts)})


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
        Largest model a ``model`` operation may name.

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
        if "data" in obj:
            raise LedgerError("model bytes are never ordered inline: upload them (POST /models), "
                              "the operation names their digest")
        if len(value) > MAX_MODEL_OP:
            raise LedgerError(f"model operation of {len(value)} characters exceeds {MAX_MODEL_OP}")
        _keys(obj, {"op", "hash", "size", "client", "sign", "receipts"})
        digest, size, receipts = obj["hash"], obj["size"], obj["receipts"]
        if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
            raise LedgerError("model hash must be 64 lowercase hex digits")
        if type(size) is not int or not 0 <= size <= max_model_bytes:
            raise LedgerError(f"model size must be an integer in 0..{max_model_bytes}")
        if not isinstance(obj["client"], str) or not isinstance(obj["sign"], str):
            raise LedgerError("model client and sign must be strings")
        if not isinstance(receipts, list) or not 1 <= len(receipts) <= MAX_RECEIPTS:
            raise LedgerError(f"model receipts must be a list of 1..{MAX_RECEIPTS}")
        return Op("model", model=ModelRef(digest, size, obj["client"], obj["sign"], tuple(receipts)))
    if kind == "ping":
        _keys(obj, {"op", "from", "nonce"})
        return Op("ping")
    raise LedgerError(f"unknown operation {kind!r}")


def _keys(obj: dict[str, Any], keys: set[str]) -> None:
    if set(obj) != keys:
        raise LedgerError(f"operation fields must be {sorted(keys)}, got {sorted(obj)}")


def check_model_op(state: FederationState, ref: ModelRef, replicas: Sequence[str]) -> None:
    """Whether a ``model`` operation may execute at a point of the order whose state is ``state``.

    Parameters
    ----------
    state : FederationState
        The chain state after every operation ordered before it.
    ref : ModelRef
        The operation.
    replicas : Sequence[str]
        Every replica's public key (hex) in index order (the receipts' signers).

    Raises
    ------
    LedgerError
        Why not, the same on every node: the uploader is not enrolled or did not sign
        these bytes, the model exceeds the charter's size, or its receipts are too
        few, repeated or invalid.
    """
    check_upload(state, ref.client, ref.sign, ref.hash)
    check_model_size(state, ref.size)
    check_receipts(ref.receipts, ref.hash, ref.size, replicas)


def apply_op(ledger: Ledger, op: Op, head_seq: int | None = None, replicas: Sequence[str] = (),
             data: bytes | None = None) -> dict[str, Any]:
    """Execute one committed operation on ``ledger``.

    Parameters
    ----------
    ledger : Ledger
        The node's local ledger.
    op : Op
        A parsed operation.
    head_seq : int | None (default: None)
        The head's ``sequenceNo`` if the caller knows it (saves parsing the head).
    replicas : Sequence[str] (default: ())
        Every replica's public key in index order: a ``model`` operation's receipts
        are checked against them (none given: every model operation is refused).
    data : bytes | None (default: None)
        A ``model`` operation's bytes, already checked against its digest and size by
        the caller; needed only if the ledger does not hold the model yet.

    Returns
    -------
    dict[str, Any]
        ``{"ok": True, ...}`` with what was written, or ``{"ok": False, "reason": ...}``
        when the operation is refused. The outcome is the same on every node that
        executed the same operations before.

    Raises
    ------
    MissingModel
        A valid ``model`` operation whose bytes neither the ledger nor ``data`` hold:
        the caller fetches them and executes it again (nothing was written).
    sqlite3.Error | OSError
        Storage failures propagate: the node must stop rather than diverge.
    """
    if op.kind == "block":
        assert op.block is not None
        return _apply_block(ledger, op.block, head_seq)
    if op.kind == "model":
        ref = op.model
        assert ref is not None
        try:  # judged against the chain at this point of the order: the same on every node
            if not replicas:
                raise LedgerError("no replica keys to check storage receipts against")
            check_model_op(ledger.state(), ref, replicas)
        except LedgerError as err:
            return {"ok": False, "reason": str(err)}
        if not ledger.has_model(ref.hash):
            if data is None:
                raise MissingModel(f"model {ref.hash} is not held here")
            try:
                ledger.put_model(data, ref.hash)  # the caller checked the bytes' digest and size
            except LedgerError as err:
                return {"ok": False, "reason": str(err)}
        return {"ok": True, "hash": ref.hash, "size": ref.size}
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
