"""How a committee agrees on one round statement, behind one interface (BCS-FL, Sec. IV-C).

Every member proposes the digest of the :class:`~bcsfl_flower.federation.RoundStatement`
it computed itself (model, inputs, decisions, stakes). ``CountingAgreement`` is the
plain quorum count: a digest proposed by at least 2f+1 of the 3f+1 members wins. The
PBFT module replaces it with a full consensus run over the same digests. Either way
the outcome names the winning digest and who committed it; the committee then signs
that statement, and the certificate that goes on the block is the federation's one
:class:`~bcsfl_flower.federation.Certificate` (checked by the one ``verify``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..crypto import SigningKey
from ..federation import quorum_size

__all__ = ["Agreement", "AgreementOutcome", "CountingAgreement"]


@dataclass(frozen=True)
class AgreementOutcome:
    """Result of one agreement.

    Attributes
    ----------
    value : str | None
        The statement digest 2f+1 members committed, or None when no quorum formed.
    committed : list[str]
        Members (draw order) that committed ``value``: they sign the statement.
    dissenters : list[str]
        Members that proposed another digest (silent members are not dissenters).
    log : list[str]
        Why no quorum formed, when it did not.
    details : dict
        Protocol facts for the block's informational ``consensus`` field.
    """

    value: str | None
    committed: list[str] = field(default_factory=list)
    dissenters: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Agreement(ABC):
    """Turns the members' own statement digests into (at most) one committed digest."""

    @abstractmethod
    def decide(
        self,
        server_round: int,
        members: list[str],
        keys: Mapping[str, SigningKey],
        proposals: Mapping[str, str],
    ) -> AgreementOutcome:
        """Agree among ``members`` (draw order; the first is primary) on one digest.

        ``proposals`` maps each member to the statement digest it computed itself;
        ``keys`` holds the registered signing keys of the members that can take part
        (held by each member; passed here because the in-process committee simulates
        them). A member without a key is silent.
        """


class CountingAgreement(Agreement):
    """A digest wins when at least 2f+1 members proposed it (no message rounds)."""

    def decide(self, server_round, members, keys, proposals):  # noqa: D102
        threshold = quorum_size(len(members))
        voting = {m: proposals[m] for m in members if m in proposals and m in keys}
        counts = Counter(voting.values())
        if not counts or counts.most_common(1)[0][1] < threshold:
            return AgreementOutcome(None, [], [],
                                    [f"no statement reached {threshold} votes: {dict(counts)}"],
                                    {"protocol": "quorum-count"})
        value = counts.most_common(1)[0][0]
        committed = [m for m in members if voting.get(m) == value]
        dissent = [m for m in members if m in voting and voting[m] != value]
        return AgreementOutcome(value, committed, dissent, [], {"protocol": "quorum-count"})
