"""One round of the coordinator committee in the ServerApp: compute, agree, sign (BCS-FL, Sec. IV-B/C).

The committee is the one the chain draws (:meth:`FederationState.committee`, seeded by
the last certificate's signatures). Every member computes the candidate with the pure
:func:`~.coordinator.coordinate`, builds the round record and statement from the state
it read, and proposes the statement's digest; the agreement (PBFT by default, or a
plain quorum count) commits at most one digest, and the members that committed it
sign that statement with their registered keys. In this in-process committee
(``committee="server"``) those keys are read from the key dir of the machine the
simulation runs on: a stand-in for coordinators on client nodes (``committee="nodes"``,
:mod:`.relay`), which sign with keys only they hold.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..crypto import SigningKey
from ..federation import Certificate, FederationState
from .agreement import Agreement
from .coordinator import Behaviour, Coordinator, CoordinatorOutput, coordinate, poisoned_candidate
from .filter import FilterConfig, finite_or_none
from .outcome import RoundOutcome, RoundRecord, round_record
from .pbft_agreement import PbftAgreement
from .rootset import RootSet
from .verify import Rejection, VerifiedUpdate

__all__ = ["Committee"]


@dataclass
class Committee:
    """Runs the chain's committee for one round inside the ServerApp.

    Parameters
    ----------
    agreement : Agreement (default: PbftAgreement())
        How members agree on one statement digest.
    byzantine : Mapping[str, Behaviour] (default: {})
        Test hook: members (by id) that propose a statement for another candidate.
    byzantine_first : int (default: 0)
        Experiment hook: the first this-many members drawn each round (the view-0
        primary first) propose a statement for a poisoned candidate.
    """

    agreement: Agreement = field(default_factory=lambda: PbftAgreement())
    byzantine: Mapping[str, Behaviour] = field(default_factory=dict)
    byzantine_first: int = 0

    def decide(
        self,
        *,
        state: FederationState,
        server_round: int,
        chain_round: int | None = None,
        keys: Mapping[str, SigningKey],
        global_tensors: Mapping[str, np.ndarray],
        updates: Sequence[VerifiedUpdate],
        refused: Sequence[Rejection],
        root: RootSet | None,
        config: FilterConfig,
        previous: Mapping[str, np.ndarray] | None = None,
    ) -> RoundOutcome:
        """Agree on this round's statement; the certificate carries the committed members' signatures.

        ``server_round`` is Flower's round (the packages and the filter's seeds use it);
        ``chain_round`` the round the statement certifies (default: ``server_round``; a
        run on a ledger with earlier rounds continues their count). ``keys`` are the
        members' registered signing keys at hand (a member without one is silent);
        ``previous`` the model certified before ``global_tensors`` (server momentum).
        """
        clock = time.perf_counter
        committee = state.committee()
        members = list(committee)
        t0 = clock()
        honest = coordinate(global_tensors, updates, server_round=server_round, root=root, config=config,
                            previous=previous)
        t1 = clock()
        twist = {m: poisoned_candidate(-5.0) for m in members[: self.byzantine_first]}
        twist.update({m: b for m, b in self.byzantine.items() if m in members})
        outputs = {m: Coordinator(m, keys.get(m), twist.get(m)).propose(honest, global_tensors) for m in members}
        decisions = [d.to_json() for d in honest.result.decisions]
        by_candidate: dict[str, RoundRecord] = {}  # members with the same candidate build the same record
        for out in outputs.values():
            if out.candidate_hash not in by_candidate:
                by_candidate[out.candidate_hash] = round_record(state, out.candidate_hash, updates, refused, decisions)
        records = {m: by_candidate[out.candidate_hash] for m, out in outputs.items()}
        statements = {m: r.statement(state, chain_round or server_round) for m, r in records.items()}
        outcome = self.agreement.decide(server_round, members, keys, {m: s.digest for m, s in statements.items()})
        timings = {"filter_aggregate": t1 - t0, "agreement": clock() - t1}
        result = RoundOutcome(members, consensus=outcome.details, timings=timings, log=list(outcome.log),
                              filter_info=_filter_info(honest, root))
        result.dissent = [{"member": m, "statement": statements[m].digest} for m in outcome.dissenters]
        if outcome.value is None:
            return result
        speaker = outcome.committed[0]
        statement = statements[speaker]
        signatures = tuple(statement.sign(m, keys[m]) for m in outcome.committed)
        result.certificate = Certificate(statement, signatures)
        result.record = records[speaker]
        result.candidate = outputs[speaker].result.candidate
        result.candidate_bytes = outputs[speaker].candidate_bytes
        return result


def _filter_info(honest: CoordinatorOutput, root: RootSet | None) -> dict:
    r = honest.result
    return {
        "reference": r.reference,
        "root_source": root.source if root else None,
        "clip_norm": finite_or_none(r.clip_norm),
        "root_loss_before": finite_or_none(r.root_loss_before),
        "root_loss_after": finite_or_none(r.root_loss_after),
    }
