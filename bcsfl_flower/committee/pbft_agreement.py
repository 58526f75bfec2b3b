"""The committee's agreement through PBFT (the consensus package's sans-IO replicas).

Each member runs a :class:`~bcsfl_flower.consensus.replica.Replica` whose validate hook
accepts only the candidate hash the member computed itself, and submits that hash as
its request. An honest primary orders it and 2f+1 replicas commit; a primary that
proposes anything else is refused by every honest backup, its request timers expire,
and a view change hands the round to the next member in draw order. In-process the
replicas talk over the consensus package's simulated network (reliable by default;
any fault schedule can be injected); on client nodes the same messages go through
the ServerApp's relay.

The certificate that goes on the block is the members' signatures over the committed
hash (what the ledger and clients check); the PBFT details (view, sequence number,
view changes, commit quorum) go beside it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..consensus.messages import Request
from ..consensus.replica import PBFTConfig, Replica
from ..consensus.simnet import FaultSchedule, SimNetwork
from ..crypto import SigningKey
from .agreement import Agreement, AgreementOutcome, QuorumCertificate, Vote, quorum_size

__all__ = ["PbftAgreement"]


class PbftAgreement(Agreement):
    """Agree on one candidate hash by running PBFT among the committee members.

    Parameters
    ----------
    schedule : FaultSchedule | None
        Network behaviour of the in-process network (default: reliable).
    request_timeout : float
        Virtual time before a backup suspects a primary that has not ordered its request.
    deadline : float
        Virtual time after which the round gives up (no certificate).
    """

    def __init__(
        self, schedule: FaultSchedule | None = None, request_timeout: float = 50.0, deadline: float = 5_000.0
    ) -> None:
        self.schedule = schedule
        self.config = PBFTConfig(request_timeout=request_timeout)
        self.deadline = deadline

    def decide(
        self,
        server_round: int,
        members: list[str],
        keys: Mapping[str, SigningKey],
        proposals: Mapping[str, str],
    ) -> AgreementOutcome:
        """Run PBFT among ``members`` (index = draw order) until 2f+1 commit a hash."""
        n = len(members)
        publics = [keys[m].public_hex for m in members]
        replicas = [
            Replica(i, keys[m], publics, validate=(lambda value, own=proposals.get(m): value == own), config=self.config)
            for i, m in enumerate(members)
        ]
        net = SimNetwork(replicas, self.schedule or FaultSchedule.reliable(seed=server_round))
        for i, m in enumerate(members):
            if m in proposals:
                net.submit_at(0.0, Request(client=m, rid=server_round, value=proposals[m]), targets=[i])
        needed = quorum_size(n)

        def first_value(i: int) -> str | None:
            return next((c.request.value for c in net.committed[i] if not c.noop and c.request), None)

        def decided() -> bool:
            # Stop once a hash has 2f+1 commits and every member that proposed it committed too.
            values = [first_value(i) for i in range(n)]
            for v in set(values) - {None}:
                if values.count(v) >= needed:
                    return all(values[i] == v for i, m in enumerate(members) if proposals.get(m) == v)
            return False

        net.run(self.deadline, stop=decided)
        values = {i: first_value(i) for i in range(n)}
        counts = {v: sum(1 for x in values.values() if x == v) for v in set(values.values()) - {None}}
        winner = next((v for v, c in counts.items() if c >= needed), None)
        # view_changes: how many times the committee replaced its primary (views advanced).
        details = {"protocol": "pbft", "view_changes": max(net.views), "replica_view_entries": net.view_changes,
                   "messages": net.stats.sent, "virtual_time": round(net.now, 3)}
        if winner is None:
            return AgreementOutcome(None, list(members), [f"PBFT did not commit by t={self.deadline}: {counts}"], details)
        first = next(c for i in range(n) for c in net.committed[i] if not c.noop and c.request and c.request.value == winner)
        details.update(seq=first.seq, commit_view=first.view, committed_by=[members[i] for i in range(n) if values[i] == winner],
                       commit_certificate=first.certificate.to_json())  # 2f+1 signed PBFT commits
        votes = tuple(Vote.cast(m, keys[m], winner) for i, m in enumerate(members) if values[i] == winner)
        dissent = [m for i, m in enumerate(members) if proposals.get(m) != winner or values[i] not in (None, winner)]
        return AgreementOutcome(QuorumCertificate(winner, needed, votes), dissent, [], details)
