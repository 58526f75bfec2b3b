"""Quorum arithmetic and the commit quorum certificate (Castro & Liskov, OSDI 1999, 4.2).

A :class:`QuorumCertificate` is the set of 2f+1 signed ``Commit(view, seq, digest)``
messages from distinct replicas that made a replica execute ``seq``. At least f+1 of
the signers are correct and only commit after the request prepared, so the request is
committed in the PBFT sense (the paper's *committed* predicate, section 4.2): any replica (or ledger node, or client) holding the
replica set's public keys can check the certificate on its own with :func:`verify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .messages import NULL_DIGEST, Commit, Message, Request, signed_by

__all__ = [
    "max_faulty", "quorum_size", "QuorumCertificate", "verify", "verify_commit", "entry_matches",
]


def max_faulty(n: int) -> int:
    """f = floor((n - 1) / 3): the faults n replicas tolerate."""
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    """2f + 1."""
    return 2 * max_faulty(n) + 1


@dataclass(frozen=True)
class QuorumCertificate(Message):
    """2f+1 commits from distinct replicas for (``view``, ``seq``, ``digest``)."""

    TAG: ClassVar[str] = "qc"
    view: int
    seq: int
    digest: str
    commits: tuple[Commit, ...]

    @property
    def signers(self) -> tuple[int, ...]:
        return tuple(c.sender for c in self.commits)

    def to_json(self) -> dict:
        """Plain-JSON form (hex signatures) for a ledger."""
        return {
            "view": self.view,
            "seq": self.seq,
            "digest": self.digest,
            "commits": [{"sender": c.sender, "sig": c.sig.hex()} for c in self.commits],
        }

    @classmethod
    def from_json(cls, obj: dict) -> QuorumCertificate:
        view, seq, digest = int(obj["view"]), int(obj["seq"]), str(obj["digest"])
        commits = tuple(
            Commit(view, seq, digest, int(c["sender"]), bytes.fromhex(c["sig"]))
            for c in obj["commits"]
        )
        return cls(view, seq, digest, commits)


def verify_commit(commit: Commit, replica_keys: Sequence[str]) -> bool:
    """True when ``commit`` is signed by the replica it names."""
    return signed_by(commit, replica_keys)


def verify(
    cert: QuorumCertificate,
    replica_keys: Sequence[str],
    request: Request | None = None,
) -> bool:
    """Check ``cert`` against the replica set (public keys in replica-index order).

    True when at least 2f+1 distinct replicas signed a commit matching the
    certificate's (view, seq, digest). With ``request``, also check that the certified
    digest is that request's digest (see :func:`entry_matches` for null requests).
    """
    if not isinstance(cert, QuorumCertificate):
        return False
    if request is not None and request.digest != cert.digest:
        return False
    signers: set[int] = set()
    for c in cert.commits:
        if not isinstance(c, Commit):
            return False
        if (c.view, c.seq, c.digest) != (cert.view, cert.seq, cert.digest):
            return False
        if c.sender in signers:
            continue
        if not verify_commit(c, replica_keys):
            return False
        signers.add(c.sender)
    return len(signers) >= quorum_size(len(replica_keys))


def entry_matches(cert: QuorumCertificate, seq: int, request: Request | None) -> bool:
    """The certificate is for ``seq`` and for ``request`` (None: the null request)."""
    if cert.seq != seq:
        return False
    return cert.digest == (NULL_DIGEST if request is None else request.digest)
