"""PBFT wire messages, their canonical encoding, signing, and the replica's outputs.

The messages of Castro & Liskov, "Practical Byzantine Fault Tolerance" (OSDI 1999):
REQUEST (section 4.1), PRE-PREPARE / PREPARE / COMMIT (4.2), CHECKPOINT (4.3),
VIEW-CHANGE with its prepared certificates and NEW-VIEW (4.4); plus this package's
Forward (a backup relays a request to the primary, 4.1), Status and CatchUp (heartbeat
and state transfer from certified committed entries), StateProof (a stable checkpoint
for a replica behind it, 4.3), RequestFetch and RequestBody (a request body by digest:
view changes carry prepared requests by digest only, as in the TOCS 2002 article).
Signatures stand in for the paper's MACs, as in the OSDI paper's signed variant.
Every type has a size bound (:mod:`.limits`).

Every message is a frozen dataclass. Its *body* is a length-prefixed canonical
encoding of the type tag and every field except ``sig``; the sender signs the body
with Ed25519 (:class:`bcsfl_flower.crypto.SigningKey`). Nested messages (a view-change
carries checkpoint and prepare messages, a new-view carries view-changes) are encoded
with their own signatures, so a relayed message stays verifiable by anyone.

Signature checks go through :func:`bcsfl_flower.crypto.check_signature` (re-exported
here), a memo of Ed25519 verification keyed by (public key, signature, body): a message
that reaches every replica (or is nested in view-changes again and again) is checked
once per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..crypto import (
    SigningKey, cache_enabled, check_signature, count_memo_hit, set_verify_cache, sha256_hex,
    verify_cache_stats,
)

__all__ = [
    "NULL_DIGEST", "GENESIS_DIGEST", "Message", "Signed", "Request", "PrePrepare", "Prepare",
    "Commit", "Checkpoint", "PreparedCert", "ViewChange", "NewView", "Forward", "Status",
    "CommittedEntry", "CatchUp", "StateProof", "RequestFetch", "RequestBody", "Send", "Broadcast", "Committed", "SetTimer", "CancelTimer",
    "ViewEntered", "Output", "canonical", "check_signature", "set_verify_cache",
    "verify_cache_stats", "sign", "signed_by", "cache_enabled",
]

#: Digest of the null request that fills gaps in a new view.
NULL_DIGEST = "null"
#: State digest before any request executed (the checkpoint at sequence number 0).
GENESIS_DIGEST = sha256_hex(b"bcsfl-pbft-genesis")


def canonical(x: Any) -> bytes:
    """Unambiguous, deterministic byte encoding of messages and plain values."""
    if isinstance(x, Message):
        return x.encoded()
    if x is None:
        return b"N"
    if x is True:
        return b"T"
    if x is False:
        return b"F"
    if isinstance(x, int):
        return b"i%d;" % x
    if isinstance(x, str):
        raw = x.encode()
        return b"s%d:" % len(raw) + raw
    if isinstance(x, bytes):
        return b"b%d:" % len(x) + x
    if isinstance(x, (tuple, list)):
        return b"l%d:" % len(x) + b"".join(canonical(i) for i in x)
    raise TypeError(f"cannot encode {type(x).__name__}")


class Message:
    """Base of every encodable dataclass; caches its encoding on first use."""

    TAG: ClassVar[str] = "?"
    UNSIGNED: ClassVar[tuple[str, ...]] = ()
    """Fields that travel but that the signature leaves out (another field binds them)."""

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_cached_names")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls) if f.name != "sig")  # type: ignore[arg-type]
            cls._cached_names = names  # type: ignore[attr-defined]
        return names

    def _fields_encoding(self, names: Sequence[str]) -> bytes:
        tag = self.TAG.encode()
        return b"m%d:" % len(tag) + tag + b"".join(canonical(getattr(self, n)) for n in names)

    def body(self) -> bytes:
        """The signed bytes: tag and every field but ``sig`` and those in ``UNSIGNED``."""
        cached = self.__dict__.get("_body")
        if cached is None:
            names = self._names()
            if self.UNSIGNED:
                names = tuple(n for n in names if n not in self.UNSIGNED)
            cached = self._fields_encoding(names)
            object.__setattr__(self, "_body", cached)
        return cached

    def encoded(self) -> bytes:
        """Every field, then the signature (when the message has one): what travels."""
        cached = self.__dict__.get("_enc")
        if cached is None:
            sig = getattr(self, "sig", None)
            fields = self._fields_encoding(self._names()) if self.UNSIGNED else self.body()
            cached = fields + (canonical(sig) if sig is not None else b"")
            object.__setattr__(self, "_enc", cached)
        return cached


class Signed(Message):
    """A message with a ``sender`` replica index and an Ed25519 ``sig`` over its body."""

    sender: int
    sig: bytes


def sign(msg: Signed, key: SigningKey, memo: Optional[dict] = None) -> Signed:
    """Fill in ``msg.sig`` (constructed with ``sig=b""``) and return it.

    Ed25519 is deterministic, so a signer that re-sends an identical message (a status
    heartbeat, a retransmitted view-change) may pass a ``memo`` dict to reuse the
    signature instead of paying for a new one.
    """
    body = msg.body()
    if memo is None:
        sig = key.sign(body)
    else:
        h = hashlib.sha256(body).digest()
        sig = memo.get(h)
        if sig is None:
            if len(memo) >= 1024:
                memo.clear()
            sig = memo[h] = key.sign(body)
    object.__setattr__(msg, "sig", sig)  # frozen: set once, before use
    msg.__dict__.pop("_enc", None)
    msg.__dict__.pop("_sig_ok", None)
    return msg


def signed_by(msg: Signed, keys: Sequence[str]) -> bool:
    """True when ``msg.sender`` indexes ``keys`` and the signature verifies under it.

    The answer is also remembered on the (immutable) message object, so a message
    object delivered to many replicas, or nested in many view-changes, is hashed once.
    """
    s = getattr(msg, "sender", None)
    if type(s) is not int or not 0 <= s < len(keys):
        return False
    pub = keys[s]
    memo = msg.__dict__.get("_sig_ok") if cache_enabled() else None
    if memo is not None and memo[0] == pub:
        count_memo_hit()
        return memo[1]
    ok = check_signature(pub, msg.sig, msg.body())
    if cache_enabled():
        msg.__dict__["_sig_ok"] = (pub, ok)
    return ok


# --------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class Request(Message):
    """A client request: ``value`` to be ordered under the de-duplication key (client, rid).

    ``sig`` is the client's signature over the body; replicas check it only when they
    were given client keys (the committee mode relies on the validate hook instead).

    :attr:`digest` covers the client's signature too (when there is one), so the digest
    a primary signs in a pre-prepare binds everything a backup checks in the request
    it carries: a copy whose request matches the signed digest is exactly what the
    primary proposed, and any copy altered on the way fails the digest check.
    """

    TAG: ClassVar[str] = "request"
    client: str
    rid: int
    value: str
    sig: bytes = b""

    @property
    def key(self) -> tuple[str, int]:
        return (self.client, self.rid)

    @property
    def digest(self) -> str:
        """SHA-256 of the body followed by the encoded client signature; of the body
        alone for an unsigned request (the encoding is prefix-free, so the two forms
        never collide, and unsigned requests keep the digests they always had)."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = sha256_hex(self.body() + canonical(self.sig) if self.sig else self.body())
            object.__setattr__(self, "_digest", cached)
        return cached

    @classmethod
    def make(cls, client: str, rid: int, value: str, key: SigningKey | None = None) -> Request:
        req = cls(client, rid, value, b"")
        if key is not None:
            object.__setattr__(req, "sig", key.sign(req.body()))
        return req


# --------------------------------------------------------------------- normal case

@dataclass(frozen=True)
class PrePrepare(Signed):
    """Primary of ``view`` assigns ``seq`` to the request with ``digest`` (None = null).

    As in Castro and Liskov's PBFT, the signature covers the digest, not the request
    it piggybacks: whoever uses ``request`` checks that its digest is ``digest``. A batch
    of thousands of transactions is then hashed once (its digest), not three more times
    by Ed25519 signing and verifying.

    ``request`` is therefore not evidence against the signer: a copy whose request does
    not match ``digest`` may have been altered by whoever relayed it, and a replica
    drops that copy instead of suspecting the primary. Since the request digest also
    covers the client's signature, a matching request that fails the client-signature
    or validate check is what the primary signed, and only that is held against it.
    """

    TAG: ClassVar[str] = "pre-prepare"
    UNSIGNED: ClassVar[tuple[str, ...]] = ("request",)
    view: int
    seq: int
    digest: str
    request: Optional[Request]
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class Prepare(Signed):
    TAG: ClassVar[str] = "prepare"
    view: int
    seq: int
    digest: str
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class Commit(Signed):
    TAG: ClassVar[str] = "commit"
    view: int
    seq: int
    digest: str
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class Checkpoint(Signed):
    """``sender`` executed up to ``seq`` and reached ``state_digest`` (the execution hash
    chain), its driver's application state ``app_digest`` ("" when not checkpointed) and
    the at-most-once table of digest ``clients_digest`` (:mod:`.dedup`)."""

    TAG: ClassVar[str] = "checkpoint"
    seq: int
    state_digest: str
    app_digest: str
    clients_digest: str
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class Forward(Signed):
    """A backup relays a client request to the primary."""

    TAG: ClassVar[str] = "forward"
    request: Request
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class RequestFetch(Signed):
    """``sender`` needs the body of the request with ``digest``, ordered at ``seq``."""

    TAG: ClassVar[str] = "request-fetch"
    digest: str
    seq: int
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class RequestBody(Signed):
    """The answer to a :class:`RequestFetch`; the asker checks the request's digest."""

    TAG: ClassVar[str] = "request-body"
    request: Request
    sender: int
    sig: bytes = b""


# --------------------------------------------------------------------- view change

@dataclass(frozen=True)
class PreparedCert(Message):
    """P_m of the paper: a pre-prepare and 2f matching prepares from distinct backups.
    The pre-prepare carries no request (its signature covers the digest only), so a
    view change stays small whatever the requests' size."""

    TAG: ClassVar[str] = "prepared"
    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True)
class ViewChange(Signed):
    """``sender`` moves to ``view``; carries its stable checkpoint and its P set."""

    TAG: ClassVar[str] = "view-change"
    view: int
    stable_seq: int
    stable_digest: str
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedCert, ...]
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class NewView(Signed):
    """New primary's proof (2f+1 view-changes) and its re-issued pre-prepares (O), by
    digest: they carry no request."""

    TAG: ClassVar[str] = "new-view"
    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    sender: int
    sig: bytes = b""


# ----------------------------------------------------------------- catch-up / status

@dataclass(frozen=True)
class Status(Signed):
    """Heartbeat: where ``sender`` stands (peers answer with what it is missing)."""

    TAG: ClassVar[str] = "status"
    view: int
    normal: bool
    last_executed: int
    stable_seq: int
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class CommittedEntry(Message):
    """One committed sequence number with its request (None = null) and certificate."""

    TAG: ClassVar[str] = "entry"
    seq: int
    request: Optional[Request]
    certificate: Any  # quorum.QuorumCertificate (kept Any to avoid an import cycle)


@dataclass(frozen=True)
class CatchUp(Signed):
    """Committed entries a lagging replica lacks; each is self-certifying."""

    TAG: ClassVar[str] = "catch-up"
    entries: tuple[CommittedEntry, ...]
    sender: int
    sig: bytes = b""


@dataclass(frozen=True)
class StateProof(Signed):
    """A stable checkpoint for a replica behind it (section 4.3): the 2f+1 checkpoint
    messages that prove it and the at-most-once table they sign by digest. It certifies
    itself; ``sender`` only relays it."""

    TAG: ClassVar[str] = "state-proof"
    seq: int
    state_digest: str
    app_digest: str
    clients: tuple[tuple[str, int, tuple[int, ...], int], ...]
    proof: tuple[Checkpoint, ...]
    sender: int
    sig: bytes = b""


# The replica's outputs live in .outputs; re-exported here for convenience.
from .outputs import (  # noqa: E402
    Broadcast, CancelTimer, Committed, Output, Send, SetTimer, ViewEntered,
)
