"""How a committee agrees on one candidate hash, behind one interface.

``CountingAgreement`` is the plain quorum count: each coordinator signs the hash it
computed, and a hash signed by at least 2f+1 of the 3f+1 members wins. The PBFT
module replaces it with a full consensus run; both return a :class:`QuorumCertificate`
that any client or ledger node can check on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..crypto import SigningKey, verify_signature

__all__ = [
    "Agreement", "AgreementOutcome", "CountingAgreement", "QuorumCertificate", "Vote", "prepare_digest",
    "quorum_size",
]


def quorum_size(committee_size: int) -> int:
    """2f+1 for a committee of n = 3f+1 (or more) members."""
    f = (committee_size - 1) // 3
    return 2 * f + 1


def prepare_digest(server_round: int, value: str) -> bytes:
    """What a PREPARE vote signs: domain-separated from the commit vote, bound to the round."""
    return hashlib.sha256(f"bcsfl-prepare|{server_round}|{value}".encode()).digest()


@dataclass(frozen=True)
class Vote:
    """A coordinator's signature over the candidate hash it computed."""

    member: str
    public_key: str
    value: str
    signature: bytes

    @classmethod
    def cast(cls, member: str, key: SigningKey, value: str) -> Vote:
        """Sign ``value`` (a hex digest) as ``member``."""
        return cls(member, key.public_hex, value, key.sign(bytes.fromhex(value)))

    def valid(self) -> bool:
        """True when the signature verifies for the vote's own key and value."""
        return verify_signature(self.public_key, self.signature, bytes.fromhex(self.value))


@dataclass(frozen=True)
class QuorumCertificate:
    """At least ``threshold`` valid votes from distinct members for ``value``."""

    value: str
    threshold: int
    votes: tuple[Vote, ...]

    def verify(self, committee_keys: Mapping[str, str]) -> bool:
        """Check against the committee (member -> public key) recomputed by the verifier."""
        good = {
            v.member
            for v in self.votes
            if v.value == self.value and committee_keys.get(v.member) == v.public_key and v.valid()
        }
        return len(good) >= self.threshold

    def to_json(self) -> dict:
        """The ledger's quorum object (``value``, ``threshold``, ``votes``)."""
        return {
            "value": self.value,
            "threshold": self.threshold,
            "votes": [
                {"public": v.public_key, "sign": v.signature.hex()} for v in self.votes
            ],
        }


@dataclass(frozen=True)
class AgreementOutcome:
    """Result of one agreement: the certificate, or None when no quorum formed."""

    certificate: QuorumCertificate | None
    dissenters: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # protocol facts for the block (view changes, ...)


class Agreement(ABC):
    """Turns the members' own candidate hashes into (at most) one certified value."""

    @abstractmethod
    def decide(
        self,
        server_round: int,
        members: list[str],
        keys: Mapping[str, SigningKey],
        proposals: Mapping[str, str],
    ) -> AgreementOutcome:
        """Agree among ``members`` (draw order; the first is primary) on one hash.

        ``proposals`` maps each member to the hash it computed itself; ``keys`` are
        the members' signing keys (held by each member; passed here because the
        in-process committee simulates them).
        """


class CountingAgreement(Agreement):
    """A hash wins when at least 2f+1 members signed it (no message rounds)."""

    def decide(self, server_round, members, keys, proposals):  # noqa: D102
        threshold = quorum_size(len(members))
        counts = Counter(proposals[m] for m in members if m in proposals)
        if not counts:
            return AgreementOutcome(None, [])
        value, count = counts.most_common(1)[0]
        if count < threshold:
            return AgreementOutcome(None, [], [f"no hash reached {threshold} votes: {dict(counts)}"])
        votes = tuple(Vote.cast(m, keys[m], value) for m in members if proposals.get(m) == value)
        dissent = [m for m in members if proposals.get(m) != value]
        return AgreementOutcome(QuorumCertificate(value, threshold, votes), dissent, [], {"protocol": "quorum-count"})
