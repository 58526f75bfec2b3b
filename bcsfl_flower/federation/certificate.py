"""The round certificate: one statement, 2f+1 committee signatures, one ``verify``.

BCS-FL (Sec. IV-B/C) has the coordinators agree on the candidate global model by PBFT
and the ledger nodes check the signatures a block carries. Here that agreement is made
checkable by anyone: the committee signs one :class:`RoundStatement` binding the round,
the previous block, the committed model, the exact inputs aggregated, the decisions and
the resulting stake book. The same :func:`verify` serves the relay, the ledger rules,
a client before it trains, and ``bcsfl ledger verify``; each recomputes the committee
from certified chain state and never reads it from the block being checked.

The next round's seed is a beacon: beside the statement, each member signs the current
seed alone (Ed25519 signatures are deterministic, RFC 8032, so each member has exactly
one such signature per seed), and the next seed hashes those beacon signatures. Nobody
can compute it before 2f+1 members have signed, and nothing a block producer, the relay
or a client chooses (timestamps, round numbers, inputs, model bytes) enters it; see
:func:`next_seed` for the choice that remains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..crypto import SigningKey, check_signature, sha256_hex

__all__ = [
    "MIN_COMMITTEE", "Certificate", "CertificateError", "RoundStatement", "Signature", "digest_json",
    "next_seed", "quorum_size", "valid_signers", "verify",
]

#: The smallest committee a round may have: 3f+1 with f >= 1.
MIN_COMMITTEE = 4


class CertificateError(ValueError):
    """A certificate does not certify what it should; ``str(err)`` says why."""


def quorum_size(committee_size: int) -> int:
    """2f+1 for a committee of n >= 3f+1 members (f = floor((n-1)/3))."""
    return 2 * ((committee_size - 1) // 3) + 1


def digest_json(obj: Any) -> str:
    """SHA-256 hex of ``obj`` as canonical JSON (sorted keys, no spaces, ASCII)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return sha256_hex(text.encode("ascii"))


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class RoundStatement:
    """What a round's committee certifies.

    Parameters
    ----------
    charter : str
        Hash of the federation's charter block (binds the statement to one federation).
    round : int
        The server round.
    previous : str
        Hash of the block the round's block follows.
    model : str
        SHA-256 of the committed model's canonical bytes.
    inputs : str
        Digest of the exact packages aggregated (:func:`inputs_digest`).
    decisions : str
        Digest of the decisions: kept/rejected with reasons, and refused packages.
    stakes : str
        Digest of the stake book after this round.
    seed : str
        The seed the committee was drawn with (the chain state's), which the beacon
        signatures sign.
    """

    charter: str
    round: int
    previous: str
    model: str
    inputs: str
    decisions: str
    stakes: str
    seed: str

    def to_json(self) -> dict[str, Any]:
        """The statement's fields (what the block records)."""
        return {"charter": self.charter, "round": self.round, "previous": self.previous, "model": self.model,
                "inputs": self.inputs, "decisions": self.decisions, "stakes": self.stakes, "seed": self.seed}

    @classmethod
    def from_json(cls, obj: Any) -> RoundStatement:
        """Parse :meth:`to_json`'s form; raises :class:`CertificateError` if malformed."""
        if not isinstance(obj, dict) or set(obj) != {"charter", "round", "previous", "model", "inputs",
                                                     "decisions", "stakes", "seed"}:
            raise CertificateError("statement must have exactly charter, round, previous, model, inputs, "
                                   "decisions, stakes and seed")
        if isinstance(obj["round"], bool) or not isinstance(obj["round"], int):
            raise CertificateError("statement round must be an integer")
        for k in ("charter", "previous", "model", "inputs", "decisions", "stakes", "seed"):
            if not isinstance(obj[k], str):
                raise CertificateError(f"statement {k} must be a string")
        return cls(**obj)

    @property
    def digest(self) -> str:
        """What every member signs (domain-separated)."""
        return digest_json({"bcsfl": "round-statement/v1", **self.to_json()})

    @property
    def beacon_digest(self) -> str:
        """What every member's beacon signature signs: the federation and the current seed only."""
        return digest_json({"bcsfl": "seed-beacon/v1", "charter": self.charter, "seed": self.seed})

    def sign(self, member: str, key: SigningKey) -> Signature:
        """``member``'s signature over this statement, with its beacon signature."""
        return Signature(member, key.public_hex, key.sign(bytes.fromhex(self.digest)).hex(),
                         key.sign(bytes.fromhex(self.beacon_digest)).hex())


@dataclass(frozen=True)
class Signature:
    """One member's signatures (hex): over a statement's digest, and over its seed (the beacon)."""

    member: str
    public: str
    sign: str
    beacon: str

    def to_json(self) -> dict[str, str]:  # noqa: D102
        return {"member": self.member, "public": self.public, "sign": self.sign, "beacon": self.beacon}

    @classmethod
    def from_json(cls, obj: Any) -> Signature:  # noqa: D102
        if not isinstance(obj, dict) or set(obj) != {"member", "public", "sign", "beacon"} \
                or not all(isinstance(v, str) for v in obj.values()):
            raise CertificateError("signature must be {member, public, sign, beacon} strings")
        return cls(obj["member"], obj["public"], obj["sign"], obj["beacon"])


@dataclass(frozen=True)
class Certificate:
    """A statement and the committee signatures over it."""

    statement: RoundStatement
    signatures: tuple[Signature, ...]

    def to_json(self) -> dict[str, Any]:
        """The block's ``certificate`` object."""
        return {"statement": self.statement.to_json(), "signatures": [s.to_json() for s in self.signatures]}

    @classmethod
    def from_json(cls, obj: Any) -> Certificate:
        """Parse :meth:`to_json`'s form; raises :class:`CertificateError` if malformed."""
        if not isinstance(obj, dict) or set(obj) != {"statement", "signatures"}:
            raise CertificateError("certificate must have exactly statement and signatures")
        sigs = obj["signatures"]
        if not isinstance(sigs, list) or len(sigs) > 1024:
            raise CertificateError("certificate signatures must be a list (at most 1024)")
        return cls(RoundStatement.from_json(obj["statement"]), tuple(Signature.from_json(s) for s in sigs))


def valid_signers(certificate: Certificate, committee: Mapping[str, str]) -> list[Signature]:
    """The signatures of distinct committee members, under their registered keys, that verify."""
    digest = bytes.fromhex(certificate.statement.digest)
    beacon = bytes.fromhex(certificate.statement.beacon_digest)
    good: dict[str, Signature] = {}
    for s in certificate.signatures:
        if s.member in good or committee.get(s.member) != s.public or not (_hex(s.sign, 128) and _hex(s.beacon, 128)):
            continue
        if check_signature(s.public, bytes.fromhex(s.sign), digest) \
                and check_signature(s.public, bytes.fromhex(s.beacon), beacon):
            good[s.member] = s
    return [good[m] for m in sorted(good)]


def verify(certificate: Certificate, expected: RoundStatement, committee: Mapping[str, str]) -> str:
    """Check ``certificate`` certifies ``expected`` by 2f+1 of ``committee``; return the next seed.

    Parameters
    ----------
    certificate : Certificate
        What the block (or the relay) carries.
    expected : RoundStatement
        The statement the verifier computed itself from certified state and the
        block's contents.
    committee : Mapping[str, str]
        The round's committee, member id -> registered public key, recomputed by the
        verifier from the chain state before the round (draw order).

    Returns
    -------
    str
        The seed of the next draw (:func:`next_seed`).

    Raises
    ------
    CertificateError
        Committee below :data:`MIN_COMMITTEE`, a statement field that differs from
        ``expected`` (named), or fewer than 2f+1 valid member signatures.
    """
    if len(committee) < MIN_COMMITTEE:
        raise CertificateError(f"committee of {len(committee)} is below the minimum of {MIN_COMMITTEE} (3f+1, f >= 1)")
    got, want = certificate.statement.to_json(), expected.to_json()
    wrong = [k for k in want if got[k] != want[k]]
    if wrong:
        raise CertificateError(f"certificate's statement differs in {', '.join(wrong)}")
    signers = valid_signers(certificate, committee)
    needed = quorum_size(len(committee))
    if len(signers) < needed:
        raise CertificateError(f"only {len(signers)} valid committee signatures, {needed} needed")
    return next_seed(expected, signers)


def next_seed(statement: RoundStatement, signers: Sequence[Signature]) -> str:
    """The seed of the draw after ``statement``'s round: a hash of the signers' beacons.

    Bound on influence (also in the README's threat model): each beacon is the one
    deterministic signature of one member over (charter, current seed), so no block
    data, timestamp, round number, input set or model bytes changes the next seed, and
    nobody can compute it before 2f+1 members have signed. What remains: the relay
    chooses *which* valid signatures reach the block (any subset of 2f+1 or more: at
    most 5 seeds for a committee of 4) or stops the round (the chain then stays on the
    same seed and committee); a single member knows its own beacon, not the others'.
    """
    text = "|".join(["bcsfl-seed", statement.charter, statement.seed, *sorted(s.beacon for s in signers)])
    return hashlib.sha256(text.encode("ascii")).hexdigest()
