"""Ed25519 identities and SHA-256 digests shared by every layer.

Keys are Ed25519 (RFC 8032); public keys travel as 64-char lowercase hex strings,
signatures as raw 64-byte strings (hex on the ledger). Keys are made and signatures
produced through ``cryptography``; signatures are checked through libsodium (PyNaCl),
whose verification is about twice as fast as OpenSSL's here (53 vs 106 us), and a
ledger node checks every transaction of every block.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

__all__ = [
    "SigningKey", "cache_enabled", "check_signature", "check_signature_hex", "remember_valid", "set_verify_cache",
    "sha256_hex", "verify_cache_stats", "verify_signature",
]


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


class SigningKey:
    """An Ed25519 private key with the helpers every signer needs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_hex: str = raw.hex()

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Derive a key from 32 seed bytes (tests and reproducible fixtures only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load the raw 32-byte key at ``path``, creating it (mode 0600) if absent."""
        path = Path(path)
        if path.exists():
            return cls(Ed25519PrivateKey.from_private_bytes(path.read_bytes()))
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes())
        try:
            # Another process may have won the race: keep whichever key landed first.
            os.link(tmp, path)
        except FileExistsError:
            tmp.unlink()
            return cls(Ed25519PrivateKey.from_private_bytes(path.read_bytes()))
        tmp.unlink()
        return key

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; returns the 64-byte signature."""
        return self._key.sign(data)


def verify_signature(public_hex: str, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` by ``public_hex``.

    Malformed keys or signatures count as invalid rather than raising.
    """
    try:
        key = bytes.fromhex(public_hex)
        if len(key) != 32 or len(signature) != 64:
            return False
        crypto_sign_open(bytes(signature) + bytes(data), key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


# Verification is a pure function of (key, signature, data), so remembering answers is
# sound: a PBFT message that reaches every replica, or a transaction that a ledger node
# checked on arrival and checks again when it executes the block, is verified once.
class _Memo:
    """Remembered answers, at most ``limit``: two generations, the older dropped whole
    when the newer fills half of it (what was just checked is kept, so a transaction
    checked on arrival is still remembered when its block executes)."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.new: dict[Any, bool] = {}
        self.old: dict[Any, bool] = {}

    def get(self, key: Any) -> bool | None:
        hit = self.new.get(key)
        return self.old.get(key) if hit is None else hit

    def put(self, key: Any, ok: bool) -> None:
        if len(self.new) >= self.half:
            self.old, self.new = self.new, {}
        self.new[key] = ok

    def clear(self) -> None:
        self.new, self.old = {}, {}


_CACHE_MAX = 200_000
_CACHE = _Memo(_CACHE_MAX)  # (key hex, signature, SHA-256 of data) -> valid
# (key hex, signature hex, message hex), well-formed only -> valid: at least the last 50,000
# checked, some 10 s of transactions arriving at 5,000 a second (~470 bytes an entry)
_HEX_CACHE = _Memo(100_000)
_CACHE_ON = [True]
_STATS = {"verified": 0, "hits": 0, "vouched": 0}


def set_verify_cache(enabled: bool) -> None:
    """Turn the signature memo on or off (off: every check is a real verification)."""
    _CACHE_ON[0] = enabled
    _CACHE.clear()
    _HEX_CACHE.clear()


def cache_enabled() -> bool:
    """Whether :func:`check_signature` remembers its answers."""
    return _CACHE_ON[0]


def verify_cache_stats() -> dict[str, int]:
    """Counts of real Ed25519 verifications and memo hits in this process since start."""
    return dict(_STATS)


def count_memo_hit() -> None:
    """Count an answer a caller remembered itself (e.g. on a message object)."""
    _STATS["hits"] += 1


def check_signature(public_hex: str, sig: bytes, data: bytes) -> bool:
    """:func:`verify_signature`, memoised on (key, signature, SHA-256 of ``data``)."""
    if not _CACHE_ON[0]:
        _STATS["verified"] += 1
        return verify_signature(public_hex, sig, data)
    key = (public_hex, sig, hashlib.sha256(data).digest())
    hit = _CACHE.get(key)
    if hit is not None:
        _STATS["hits"] += 1
        return hit
    _STATS["verified"] += 1
    ok = verify_signature(public_hex, sig, data)
    _CACHE.put(key, ok)
    return ok


def _decoded_triple(public_hex: str, sign_hex: str, message_hex: str) -> tuple[bytes, bytes, bytes] | None:
    """Key, signature and message of a triple in the ledger's form (lowercase hex, a key of 64
    characters, a signature of 128: what decodes and encodes back to the very same text), else None."""
    try:
        key, sig, msg = bytes.fromhex(public_hex), bytes.fromhex(sign_hex), bytes.fromhex(message_hex)
    except (TypeError, ValueError):
        return None
    if len(key) != 32 or len(sig) != 64 or key.hex() != public_hex or sig.hex() != sign_hex \
            or msg.hex() != message_hex:
        return None
    return key, sig, msg


def remember_valid(public_hex: str, sign_hex: str, message_hex: str) -> bool:
    """Record a well-formed triple as valid without verifying it; True if recorded.

    Only for what f+1 replicas vouch for (:mod:`bcsfl_flower.ledger.vouch`): then
    :func:`check_signature_hex` answers it from the memo. Nothing is recorded with the
    memo off or for a triple not in the form that function accepts.
    """
    if not _CACHE_ON[0] or _decoded_triple(public_hex, sign_hex, message_hex) is None:
        return False
    _HEX_CACHE.put((public_hex, sign_hex, message_hex), True)
    _STATS["vouched"] += 1
    return True


def check_signature_hex(public_hex: str, sign_hex: str, message_hex: str) -> bool:
    """Whether ``sign_hex`` is a valid signature of ``message_hex`` by ``public_hex``, all
    three lowercase hex (key 64 characters, signature 128), as the ledger stores them.

    Any other form (uppercase, spaces, wrong length, not a string) is invalid. Memoised
    on the three strings themselves: a well-formed triple checked before is answered
    without decoding or hashing anything (every node checks every transaction of every
    block, most of them already checked when they arrived).
    """
    on = _CACHE_ON[0]
    if on:
        triple = (public_hex, sign_hex, message_hex)
        try:
            hit = _HEX_CACHE.get(triple)
        except TypeError:  # unhashable: not strings
            return False
        if hit is not None:  # only well-formed triples are remembered
            _STATS["hits"] += 1
            return hit
    decoded = _decoded_triple(public_hex, sign_hex, message_hex)
    if decoded is None:
        return False
    key, sig, msg = decoded
    _STATS["verified"] += 1
    try:
        crypto_sign_open(sig + msg, key)
        ok = True
    except CryptoError:
        ok = False
    if on:
        _HEX_CACHE.put(triple, ok)
    return ok
