"""Validity rules shared by ``Ledger.append`` and ``verify_chain``.

Every check raises ``LedgerError`` with a human-readable reason. Hex fields must be
lowercase and of the exact length, so that no byte of a stored block can change
without the change being detected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from bcsfl_flower.crypto import check_signature_hex

from .block import GENESIS, Block, LedgerError, Transaction, transaction_hash

__all__ = [
    "ChainHead",
    "check_append",
    "check_block",
    "check_link",
    "check_transaction",
    "is_digest",
    "referenced_models",
]


def is_digest(value: Any) -> bool:
    """True for a 64-char lowercase hex string (SHA-256 digest or Ed25519 public key)."""
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:  # lowercase hex is what decodes and encodes back to the very same text (half a regex's time)
        return bytes.fromhex(value).hex() == value
    except ValueError:
        return False


def _signed(public: Any, sign: Any, digest: str) -> bool:
    # Lowercase hex of the exact lengths only, through the process-wide memo: the node
    # that received a transaction checked it then, and executing its block does not
    # check it again.
    return check_signature_hex(public, sign, digest)


def check_transaction(tx: Transaction) -> None:
    """Check a transaction's hash, signature and ``model-params`` format."""
    if not is_digest(tx.public):
        raise LedgerError(f"transaction {tx.id}: public is not a 64-char hex key")
    if tx.hash != tx.expected_hash():
        raise LedgerError(f"transaction {tx.id}: hash does not match its fields")
    if not _signed(tx.public, tx.sign, tx.hash):
        raise LedgerError(f"transaction {tx.id}: invalid signature")
    if "model-params" in tx.data and not is_digest(tx.data["model-params"]):
        raise LedgerError(f"transaction {tx.id}: model-params is not a sha256 hex digest")


_TX_FIELDS = frozenset(("id", "public", "data", "timestamp", "hash", "sign"))


def _checked_transaction_id(obj: Any) -> str:
    """Run :meth:`Transaction.from_json` and :func:`check_transaction` on a parsed object.

    The common case (well-formed, correctly signed) is checked on the dict itself.
    Anything unusual takes the general path, which raises with the precise reason.
    """
    if type(obj) is dict and obj.keys() == _TX_FIELDS:
        tx_id, public, data, sign = obj["id"], obj["public"], obj["data"], obj["sign"]
        ts, digest = obj["timestamp"], obj["hash"]
        if (type(tx_id) is str and type(sign) is str and type(digest) is str and type(data) is dict
                and type(ts) in (float, int) and math.isfinite(ts) and is_digest(public)
                and ("model-params" not in data or is_digest(data["model-params"]))
                and digest == transaction_hash(tx_id, public, data, ts)
                and _signed(public, sign, digest)):
            return tx_id
    tx = Transaction.from_json(obj, copy=False)
    check_transaction(tx)
    return tx.id


def _plain_checked_id(obj: dict[str, Any], expected: str) -> str | None:
    """The id of a transaction of a plain batch (its fields and their types were checked
    while the block was encoded, :attr:`Block.tx_hashes`) whose hash is ``expected``, the
    one recomputed then, with a valid signature; ``None`` if any of that fails."""
    data = obj["data"]
    if (obj["hash"] == expected and ("model-params" not in data or is_digest(data["model-params"]))
            and check_signature_hex(obj["public"], obj["sign"], expected)):  # a key of 64 lowercase hex
        return obj["id"]
    return None


def referenced_models(block: Block) -> list[str]:
    """Model digests a block references, in order, without duplicates.

    These are ``data["model-params"]`` (the round's global model, if any), each
    transaction's ``data["model-params"]`` and each pooled package's parameters
    (each ``model_hash`` in ``data["pool"]``): the store must hold them all.
    """
    found: list[str] = []
    own = block.data.get("model-params")
    if own is not None:
        found.append(own)
    txs = block.data.get("transactions", [])
    for tx in txs if isinstance(txs, list) else []:
        data = tx.get("data") if isinstance(tx, dict) else None
        if isinstance(data, dict) and data.get("model-params") is not None:
            found.append(data["model-params"])
        pooled = data.get("pool") if isinstance(data, dict) else None
        for item in pooled if isinstance(pooled, list) else []:
            if isinstance(item, dict) and item.get("model_hash") is not None:
                found.append(item["model_hash"])
    return list(dict.fromkeys(x for x in found if isinstance(x, str)))


def check_block(block: Block) -> None:
    """Check a non-genesis block on its own: hash, producer signature, transactions.

    What the block *means* (charter, enrolments, a certified round) is checked by the
    federation's state machine (:meth:`bcsfl_flower.federation.FederationState.apply`).
    """
    if block.sequence_no == 0 or block.hash == GENESIS.hash:
        raise LedgerError("only the genesis block may have sequenceNo 0 or the genesis hash")
    if not is_digest(block.hash):
        raise LedgerError("hash is not a 64-char lowercase hex digest")
    if block.hash != block.expected_hash():
        raise LedgerError("hash does not match the block's fields")
    if not is_digest(block.public):
        raise LedgerError("public is not a 64-char hex key")
    if not _signed(block.public, block.sign, block.hash):
        raise LedgerError("invalid producer signature")
    txs = block.data.get("transactions", [])
    if not isinstance(txs, list):
        raise LedgerError("data.transactions must be a list")
    seen: set[str] = set()
    hashes = block.tx_hashes  # recomputed while encoding the block (None: not a plain batch)
    for i, obj in enumerate(txs):
        tx_id = (hashes is not None and _plain_checked_id(obj, hashes[i])) or _checked_transaction_id(obj)
        if tx_id in seen:
            raise LedgerError(f"duplicate transaction id {tx_id}")
        seen.add(tx_id)
    own = block.data.get("model-params")
    if own is not None and not is_digest(own):
        raise LedgerError("data.model-params is not a sha256 hex digest")


class ChainHead(Protocol):
    """What linking a block needs of its predecessor (a :class:`Block` has these)."""

    @property
    def sequence_no(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def timestamp(self) -> float: ...


def check_link(prev: ChainHead, block: Block) -> None:
    """Check that ``block`` directly follows ``prev``."""
    if block.sequence_no != prev.sequence_no + 1:
        raise LedgerError(
            f"sequenceNo {block.sequence_no} does not follow {prev.sequence_no}"
        )
    if block.last_hash != prev.hash:
        raise LedgerError(f"lastHash does not match the hash of block {prev.sequence_no}")
    if block.timestamp < prev.timestamp:
        raise LedgerError(f"timestamp is earlier than block {prev.sequence_no}'s")


def check_append(prev: ChainHead, block: Block, has_model: Callable[[str], bool]) -> None:
    """All checks ``Ledger.append`` runs before writing ``block`` after ``prev``.

    Parameters
    ----------
    prev : ChainHead
        The current chain head (a :class:`Block`, or just its number, hash and time).
    block : Block
        The candidate block.
    has_model : Callable[[str], bool]
        Whether the content store holds a digest.
    """
    check_link(prev, block)
    check_block(block)
    for digest in referenced_models(block):
        if not has_model(digest):
            raise LedgerError(f"referenced model {digest} is not in the model store")
