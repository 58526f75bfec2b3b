"""Storage receipts: a ledger node's signed word that it holds a model's bytes.

Model bytes never travel inside consensus messages. The node that receives an upload
stages the bytes, sends them to its peers over HTTP (:mod:`~.model_relay`), and orders
only a small ``model`` operation naming the digest and size with f+1 receipts: each
the Ed25519 signature of one replica over ``(digest, size)`` under a domain tag of its
own (so no other signature of a node, PBFT's or a block's, can pass for a receipt).
f+1 signers include at least one correct node, which holds the bytes and serves them
to every node that must execute the operation without them. So a faulty node cannot
get a model ordered whose bytes nobody correct holds, and consensus carries kilobytes
whatever the model's size.

These are pure functions: the receiving node checks each receipt it collects, and
every node checks the whole set again when it executes the operation (the same
answer everywhere, since it depends only on the operation and the replica keys).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from bcsfl_flower.consensus.quorum import max_faulty
from bcsfl_flower.crypto import SigningKey, check_signature

from .block import LedgerError

__all__ = ["MAX_RECEIPTS", "check_receipt", "check_receipts", "make_receipt", "receipt_message", "needed"]

MAX_RECEIPTS = 64  # more than any cluster this ledger runs; bounds an operation's size
_TAG = b"bcsfl-staged-receipt|"
_HEX128 = re.compile(r"[0-9a-f]{128}")


def receipt_message(digest: str, size: int) -> bytes:
    """What a node signs to say it holds ``size`` bytes whose SHA-256 hex is ``digest``.

    Parameters
    ----------
    digest : str
        SHA-256 hex digest of the model bytes.
    size : int
        Their length in bytes.
    """
    return hashlib.sha256(_TAG + f"{digest}|{size}".encode("ascii")).digest()


def make_receipt(index: int, key: SigningKey, digest: str, size: int) -> dict[str, Any]:
    """Node ``index``'s receipt ``{"node": index, "sign": hex}`` for the bytes ``(digest, size)``.

    Parameters
    ----------
    index : int
        The signing node's replica index.
    key : SigningKey
        That node's key (the one the cluster lists for ``index``).
    digest : str
        SHA-256 hex digest of the bytes it holds.
    size : int
        Their length.
    """
    return {"node": index, "sign": key.sign(receipt_message(digest, size)).hex()}


def needed(n: int) -> int:
    """Receipts an operation needs in a cluster of ``n`` nodes: f+1.

    Parameters
    ----------
    n : int
        Number of replicas.
    """
    return max_faulty(n) + 1


def check_receipt(receipt: Any, digest: str, size: int, keys: Sequence[str]) -> int:
    """The index of the node whose valid receipt ``receipt`` is; :class:`LedgerError` if it is none.

    Parameters
    ----------
    receipt : Any
        A decoded receipt (``{"node": int, "sign": hex}`` if well formed).
    digest, size : str, int
        The bytes it must vouch for.
    keys : Sequence[str]
        Every replica's public key (hex) in index order.
    """
    if not isinstance(receipt, dict) or set(receipt) != {"node", "sign"}:
        raise LedgerError("a receipt must be {node, sign}")
    node, sign = receipt["node"], receipt["sign"]
    if type(node) is not int or not 0 <= node < len(keys):
        raise LedgerError(f"receipt names no replica: {str(node)[:20]!r}")
    if not isinstance(sign, str) or _HEX128.fullmatch(sign) is None \
            or not check_signature(keys[node], bytes.fromhex(sign), receipt_message(digest, size)):
        raise LedgerError(f"receipt of node {node} is not its signature over model {digest} ({size} bytes)")
    return node


def check_receipts(receipts: Sequence[Any], digest: str, size: int, keys: Sequence[str]) -> list[int]:
    """Check a ``model`` operation's receipts: f+1 or more, from distinct replicas, every one valid.

    Parameters
    ----------
    receipts : Sequence[Any]
        The operation's receipts.
    digest, size : str, int
        The model they must vouch for.
    keys : Sequence[str]
        Every replica's public key (hex) in index order.

    Returns
    -------
    list[int]
        The signers' indices, in the operation's order (where a node fetches from).

    Raises
    ------
    LedgerError
        Why not, the same on every node: too few, a repeated signer, or one invalid
        receipt (a forged one is refused even beside f+1 good ones).
    """
    want = needed(len(keys))
    if not isinstance(receipts, (list, tuple)) or len(receipts) < want:
        got = len(receipts) if isinstance(receipts, (list, tuple)) else 0
        raise LedgerError(f"model {digest} has {got} storage receipts; {want} (f+1) are needed")
    if len(receipts) > min(len(keys), MAX_RECEIPTS):
        raise LedgerError(f"model {digest} has {len(receipts)} storage receipts for {len(keys)} replicas")
    signers = [check_receipt(r, digest, size, keys) for r in receipts]
    if len(set(signers)) != len(signers):
        raise LedgerError(f"model {digest}: storage receipts repeat a replica ({signers})")
    return signers
