"""One round of the coordinator committee: draw, compute, agree.

The committee is drawn from the stake book by PoS with the previous block's hash as
seed, every member proposes the candidate it computed, and the agreement (PBFT by
default, or a plain quorum count) certifies at most one candidate hash. In this in-process committee
(``committee="server"``) the members' keys live with the strategy: a stand-in for
coordinators running on client nodes, which sign with their own keys.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..crypto import SigningKey
from .agreement import Agreement, QuorumCertificate
from .coordinator import Behaviour, Coordinator, CoordinatorOutput, coordinate, poisoned_candidate
from .pbft_agreement import PbftAgreement
from .filter import FilterConfig
from .rootset import RootSet
from ..federation.stake import draw_committee
from .verify import VerifiedUpdate

__all__ = ["Committee", "CommitteeDecision"]


@dataclass(frozen=True)
class CommitteeDecision:
    """The committee's outcome for one round."""

    members: list[str]
    public_keys: dict[str, str]
    output: CoordinatorOutput | None
    certificate: QuorumCertificate | None
    primary: str | None
    dissenters: list[str]
    log: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    consensus: dict = field(default_factory=dict)


@dataclass
class Committee:
    """Draws and runs the coordinator committee.

    Parameters
    ----------
    size : int
        Members per round (3f+1 tolerates f Byzantine; 4 tolerates one).
    agreement : Agreement
        How members agree on one candidate hash (default: PBFT).
    byzantine : Mapping[str, Behaviour]
        Test hook: members (by id) that propose something else than the honest output.
    byzantine_first : int
        Experiment hook: the first this-many members drawn each round (the view-0
        primary first) propose a poisoned candidate.
    """

    size: int = 4
    agreement: Agreement = field(default_factory=lambda: PbftAgreement())
    byzantine: Mapping[str, Behaviour] = field(default_factory=dict)
    byzantine_first: int = 0
    _keys: dict[str, SigningKey] = field(default_factory=dict)

    def key(self, member: str) -> SigningKey:
        """The signing key of ``member``'s coordinator role (created on first use)."""
        if member not in self._keys:
            self._keys[member] = SigningKey.generate()
        return self._keys[member]

    def decide(
        self,
        *,
        server_round: int,
        stakes: Mapping[str, float],
        seed: str,
        global_tensors: Mapping[str, np.ndarray],
        updates: Sequence[VerifiedUpdate],
        root: RootSet | None,
        config: FilterConfig,
    ) -> CommitteeDecision:
        """Draw the committee from ``stakes`` with ``seed`` and agree on a candidate."""
        clock = time.perf_counter
        t0 = clock()
        members = draw_committee(stakes, self.size, seed)
        keys = {m: self.key(m) for m in members}
        publics = {m: k.public_hex for m, k in keys.items()}
        if not members:
            return CommitteeDecision([], {}, None, None, None, [], ["no eligible coordinators"])
        t1 = clock()
        honest = coordinate(global_tensors, updates, server_round=server_round, root=root, config=config)
        t2 = clock()
        twist = {m: poisoned_candidate(-5.0) for m in members[: self.byzantine_first]}
        twist.update({m: b for m, b in self.byzantine.items() if m in members})
        outputs = {m: Coordinator(m, keys[m], twist.get(m)).propose(honest, global_tensors) for m in members}
        proposals = {m: out.candidate_hash for m, out in outputs.items()}
        outcome = self.agreement.decide(server_round, members, keys, proposals)
        timings = {"pos_draw": t1 - t0, "filter_aggregate": t2 - t1, "agreement": clock() - t2}
        cert = outcome.certificate
        if cert is None:
            return CommitteeDecision(members, publics, None, None, None, list(members), outcome.log, timings,
                                     outcome.details)
        primary = next(m for m in members if proposals[m] == cert.value)
        return CommitteeDecision(
            members, publics, outputs[primary], cert, primary, outcome.dissenters, outcome.log, timings, outcome.details
        )
