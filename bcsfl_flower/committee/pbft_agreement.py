"""The committee's agreement through PBFT (BCS-FL, Sec. IV-C; the consensus package's sans-IO replicas).

Each member runs a :class:`~bcsfl_flower.consensus.replica.Replica` with its registered
key, whose validate hook accepts only the statement digest the member computed itself,
and submits that digest as its request. An honest primary orders it and 2f+1 replicas
commit; a primary that proposes anything else is refused by every honest backup, its
request timers expire, and a view change hands the round to the next member in draw
order. In-process the replicas talk over the consensus package's simulated network
(reliable by default; any fault schedule can be injected). A member whose key is not
at hand is a crashed replica: it cannot sign.

The PBFT commit certificate (2f+1 signed commits of the request carrying the statement
digest) goes into the block's informational ``consensus`` field; the round certificate
is the committed members' signatures over that same statement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..consensus.messages import Request
from ..consensus.replica import PBFTConfig, Replica
from ..consensus.simnet import Crash, FaultSchedule, SimNetwork
from ..crypto import SigningKey
from ..federation import quorum_size
from .agreement import Agreement, AgreementOutcome

__all__ = ["PbftAgreement"]


class PbftAgreement(Agreement):
    """Agree on one statement digest by running PBFT among the committee members.

    Parameters
    ----------
    schedule : FaultSchedule | None (default: None)
        Network behaviour of the in-process network (None: reliable, seeded by the round).
    request_timeout : float (default: 50.0)
        Virtual time before a backup suspects a primary that has not ordered its request.
    deadline : float (default: 5000.0)
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
        """Run PBFT among ``members`` (index = draw order) until 2f+1 commit a digest."""
        n = len(members)
        # A member without its key takes part as a crashed replica under a stand-in key.
        replica_keys = [keys.get(m) or SigningKey.generate() for m in members]
        publics = [k.public_hex for k in replica_keys]
        replicas = [
            Replica(i, replica_keys[i], publics, validate=(lambda value, own=proposals.get(m): value == own),
                    config=self.config)
            for i, m in enumerate(members)
        ]
        schedule = self.schedule or FaultSchedule.reliable(seed=server_round)
        silent = tuple(Crash(i, 0.0) for i, m in enumerate(members) if m not in keys)
        net = SimNetwork(replicas, dataclasses.replace(schedule, crashes=schedule.crashes + silent))
        for i, m in enumerate(members):
            if m in proposals and m in keys:
                net.submit_at(0.0, Request(client=m, rid=server_round, value=proposals[m]), targets=[i])
        needed = quorum_size(n)

        def first_value(i: int) -> str | None:
            return next((c.request.value for c in net.committed[i] if not c.noop and c.request), None)

        def decided() -> bool:
            # Stop once a digest has 2f+1 commits and every member that proposed it committed too.
            values = [first_value(i) for i in range(n)]
            for v in set(values) - {None}:
                if values.count(v) >= needed:
                    return all(values[i] == v for i, m in enumerate(members) if m in keys and proposals.get(m) == v)
            return False

        net.run(self.deadline, stop=decided)
        values = {i: first_value(i) for i in range(n)}
        counts = {v: sum(1 for x in values.values() if x == v) for v in set(values.values()) - {None}}
        winner = next((v for v, c in counts.items() if c >= needed), None)
        # view_changes: how many times the committee replaced its primary (views advanced).
        details = {"protocol": "pbft", "view_changes": max(net.views), "replica_view_entries": net.view_changes,
                   "messages": net.stats.sent, "virtual_time": round(net.now, 3)}
        if winner is None:
            return AgreementOutcome(None, [], [], [f"PBFT did not commit by t={self.deadline}: {counts}"], details)
        first = next(c for i in range(n) for c in net.committed[i] if not c.noop and c.request and c.request.value == winner)
        committed = [m for i, m in enumerate(members) if values[i] == winner]
        # The commit certificate's digest is the ordered request's, whose value is the statement digest.
        details.update(seq=first.seq, commit_view=first.view, committed_by=committed,
                       request={"client": first.request.client, "rid": first.request.rid, "value": winner},
                       commit_certificate=first.certificate.to_json())
        dissent = [m for m in members if m in keys and m in proposals and proposals[m] != winner]
        return AgreementOutcome(winner, committed, dissent, [], details)
