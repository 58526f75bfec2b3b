"""Vouches (sans-IO): f+1 replicas' word that a transaction's signature is valid.

Every node used to verify every transaction's Ed25519 signature itself: at four nodes,
four verifications per transaction, half of the cluster's CPU. A node need not, if it
knows that f+1 distinct replicas verified it: at most f are faulty, so one of them is
correct and the signature is valid. Two statements count, both signed by a replica's
node key:

- the **vouch** of the node a client sent the transaction to: it verified it on
  arrival (:mod:`~.admission`) and tells its peers so, in batches, as a list of
  digests of ``(public, sign, hash)`` triples signed by its key (:func:`make_vouch`);
- the **block** of the primary that batched it: a correct primary verifies every
  transaction before it puts it in a block it signs (:class:`~.batcher.Batcher`), so
  its signature over the block's hash, which covers every transaction, vouches for all
  of them.

A node asks for the vouches its clients' transactions still lack. Its own and the
producer's make two, which is f+1 at four nodes unless the node is the primary itself
(then one), and short of f+1 at seven or more. It sends the transactions to the replicas
:func:`helpers` names (the next in index order), which verify them and vouch like a
receiving node (a ``check`` message). At four nodes every transaction is then verified
twice in all.

When a node executes a batch block, :meth:`VouchBook.trusted` gives the triples of its
transactions that f+1 distinct replicas vouched for (the producer counts once, and only
if the block's hash matches its fields and its signature is valid); the node tells its
signature memo they are valid (:func:`bcsfl_flower.crypto.remember_valid`) and verifies
the rest as before. Rules, hashes and everything else are checked as always. With four
nodes a transaction is verified twice in all (where it arrived, and at the primary or
the replica the primary asked), not four times.

This trusts what PBFT already assumes (at most f faulty replicas); a chain read back
later (``ledger verify``, a restarted node replaying its file) verifies every
signature. A vouch that does not verify, or names no other replica, is ignored: a
missing vouch only means the node verifies the signature itself.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterable, Sequence

from bcsfl_flower.consensus.quorum import max_faulty
from bcsfl_flower.crypto import SigningKey, check_signature_hex, verify_signature

from .block import Block

__all__ = ["DIGEST_BYTES", "MAX_CHECK_TXS", "MAX_DIGESTS", "VouchBook", "VouchOutbox", "helpers", "make_vouch",
           "read_vouch", "triple_digest"]

DOMAIN = b"bcsfl-vouch/1|"
DIGEST_BYTES = 16  # finding another triple with a vouched digest is a 2^128 second preimage
MAX_DIGESTS = 2048  # per vouch message: 64 KiB of hex at most
MAX_CHECK_TXS = 512  # transactions per check message (some 300 KiB of JSON)


def triple_digest(public: str, sign: str, digest: str) -> bytes:
    """What a vouch names: a transaction's key, signature and hash (as the chain stores them)."""
    return hashlib.sha256(f"{public}|{sign}|{digest}".encode()).digest()[:DIGEST_BYTES]


def helpers(n: int, own: int, primary: int, down: Collection[int] = ()) -> list[int]:
    """The replicas that replica ``own`` asks to verify and vouch for the transactions it admitted.

    ``own``'s vouch and the block of ``primary`` count once each (once in all when they
    are the same replica); the others needed for f+1 are the replicas after ``own`` in
    index order, ``primary`` skipped, those in ``down`` (not connected now) last. At four
    nodes: none for a backup, one for the primary.
    """
    need = max_faulty(n) + 1 - len({own, primary})
    after = [(own + k) % n for k in range(1, n)]
    return sorted((r for r in after if r != primary), key=lambda r: r in down)[:max(0, need)]


def _signed_body(index: int, body: bytes) -> bytes:
    return DOMAIN + struct.pack(">H", index) + body


def make_vouch(index: int, digests: Sequence[bytes], key: SigningKey) -> dict:
    """The APP message by which replica ``index`` vouches for ``digests`` (at most :data:`MAX_DIGESTS`)."""
    if not 0 < len(digests) <= MAX_DIGESTS:
        raise ValueError(f"a vouch names 1..{MAX_DIGESTS} digests, not {len(digests)}")
    body = b"".join(digests)
    return {"type": "vouch", "from": index, "d": body.hex(), "sig": key.sign(_signed_body(index, body)).hex()}


def read_vouch(obj: dict, keys: Sequence[str], own: int) -> tuple[int, list[bytes]] | None:
    """``(voucher, digests)`` of a vouch message signed by another replica's key, else None."""
    voucher, body_hex, sig_hex = obj.get("from"), obj.get("d"), obj.get("sig")
    if type(voucher) is not int or not 0 <= voucher < len(keys) or voucher == own:
        return None
    if not isinstance(body_hex, str) or not isinstance(sig_hex, str) or len(sig_hex) != 128 \
            or not 0 < len(body_hex) <= 2 * DIGEST_BYTES * MAX_DIGESTS or len(body_hex) % (2 * DIGEST_BYTES):
        return None
    try:
        body, sig = bytes.fromhex(body_hex), bytes.fromhex(sig_hex)
    except ValueError:
        return None
    if not verify_signature(keys[voucher], sig, _signed_body(voucher, body)):
        return None
    return voucher, [body[i:i + DIGEST_BYTES] for i in range(0, len(body), DIGEST_BYTES)]


class VouchOutbox:
    """Digests this node verified, sent in batches: one signature per :data:`MAX_DIGESTS` or per flush.

    Parameters
    ----------
    index : int
        This replica's index.
    key : SigningKey
        Its node key.
    """

    def __init__(self, index: int, key: SigningKey) -> None:
        self.index, self.key = index, key
        self.pending: list[bytes] = []

    def add(self, digests: Iterable[bytes]) -> list[dict]:
        """Queue ``digests``; returns the full vouch messages to send now."""
        self.pending.extend(digests)
        out = []
        while len(self.pending) >= MAX_DIGESTS:
            out.append(make_vouch(self.index, self.pending[:MAX_DIGESTS], self.key))
            del self.pending[:MAX_DIGESTS]
        return out

    def flush(self) -> list[dict]:
        """The vouch for what is queued (none if nothing is)."""
        if not self.pending:
            return []
        out, self.pending = [make_vouch(self.index, self.pending, self.key)], []
        return out


class VouchBook:
    """Which replicas vouched for which triple; the oldest half dropped whole past ``limit``.

    Parameters
    ----------
    keys : Sequence[str]
        Every replica's public key, in index order.
    limit : int (default: 400_000)
        Digests remembered (two generations of ``limit / 2``): some 80 s of vouches at 5,000
        transactions a second, far longer than a transaction waits for its block.
    """

    def __init__(self, keys: Sequence[str], limit: int = 400_000) -> None:
        self.index_of = {k: i for i, k in enumerate(keys)}
        self.quorum = max_faulty(len(keys)) + 1
        self.half = max(1, limit // 2)
        self.new: dict[bytes, int] = {}
        self.old: dict[bytes, int] = {}

    def add(self, voucher: int, digests: Iterable[bytes]) -> None:
        """Record that replica ``voucher`` (a verified vouch's signer) verified ``digests``."""
        bit = 1 << voucher
        for d in digests:
            if len(self.new) >= self.half:
                self.old, self.new = self.new, {}
            self.new[d] = self.new.get(d, 0) | self.old.get(d, 0) | bit

    def vouchers(self, digest: bytes) -> int:
        """Bit mask of the replicas that vouched for ``digest``."""
        return self.new.get(digest, 0) | self.old.get(digest, 0)

    def trusted(self, block: Block) -> list[tuple[str, str, str]]:
        """The ``(public, sign, hash)`` triples of ``block``'s transactions that f+1 replicas vouch for.

        Only a plain batch block produced by a replica counts, with its hash matching its
        fields and a valid producer signature; each triple's hash is the one recomputed
        from the transaction's fields (:attr:`Block.tx_hashes`).
        """
        producer = self.index_of.get(block.public)
        hashes = block.tx_hashes
        if producer is None or hashes is None or block.hash != block.expected_hash() \
                or not check_signature_hex(block.public, block.sign, block.hash):
            return []
        txs = block.data["transactions"]
        out = []
        for obj, digest in zip(txs, hashes):
            public, sign = obj["public"], obj["sign"]
            mask = self.vouchers(triple_digest(public, sign, digest)) | (1 << producer)
            if mask.bit_count() >= self.quorum:
                out.append((public, sign, digest))
        return out
