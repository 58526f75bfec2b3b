"""One-shot agreement on a single value (a candidate hash) among k in-process replicas.

Every replica submits its own candidate under one request key (``instance``, 0) and
prepares the primary's proposal only when it matches its own (the validate hook): a
dishonest or wrong primary is voted out by a view change (Castro & Liskov, OSDI 1999,
section 4.4) and the next primary proposes its own candidate. The result carries the
commit quorum certificate, checkable by anyone with
:func:`bcsfl_flower.consensus.quorum.verify`.

:func:`agree` is what ``experiments/consensus_bench.py`` times (a committee's decision
against PBFT among all n nodes) and what the consensus tests drive; the BCS-FL
committee's round agreement is :class:`bcsfl_flower.committee.pbft_agreement.PbftAgreement`,
which runs the same :class:`~.replica.Replica` on the same simulated network its own way.
The k replicas run on :class:`~.simnet.SimNetwork` (reliable by default; a fault
schedule and Byzantine behaviours can be injected for experiments).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from ..crypto import SigningKey
from .byzantine import ByzantineReplica
from .messages import Request
from .quorum import QuorumCertificate, verify
from .replica import PBFTConfig, Replica
from .simnet import FaultSchedule, SimNetwork

__all__ = ["AgreementResult", "agree"]


@dataclass(frozen=True)
class AgreementResult:
    """Outcome of :func:`agree`. ``value`` is None when no value was committed."""

    value: Optional[str]
    request: Optional[Request]
    certificate: Optional[QuorumCertificate]
    seq: int
    view: int
    committed_by: tuple[int, ...]
    replica_keys: tuple[str, ...]
    messages: int
    virtual_time: float
    view_changes: int

    @property
    def ok(self) -> bool:
        return self.certificate is not None

    def verify(self) -> bool:
        """Re-check the certificate against the replica keys and the request."""
        return (
            self.certificate is not None
            and self.request is not None
            and verify(self.certificate, self.replica_keys, self.request)
        )


def agree(
    keys: Sequence[SigningKey],
    proposals: Sequence[Optional[str]],
    *,
    validators: Optional[Sequence[Optional[Callable[[str], bool]]]] = None,
    instance: str = "agreement",
    config: Optional[PBFTConfig] = None,
    byzantine: Optional[Mapping[int, Sequence[str]]] = None,
    schedule: Optional[FaultSchedule] = None,
    max_time: float = 20_000.0,
    max_views: Optional[int] = None,
    seed: int = 0,
) -> AgreementResult:
    """Run PBFT among ``len(keys)`` replicas until one value for ``instance`` commits.

    ``keys[i]`` signs for replica i (the primary of view 0 is replica 0, so pass the
    committee in draw order). ``proposals[i]`` is replica i's own candidate (None: it
    proposes nothing). ``validators[i]`` decides whether replica i prepares a proposed
    value; by default a replica accepts exactly its own candidate (and one whose
    proposal is None abstains: it prepares nothing, but still commits what 2f+1 others
    decided). ``byzantine`` maps replica indices to behaviours from
    :data:`~.byzantine.BEHAVIOURS` (experiments only; default none). ``instance``
    (default ``"agreement"``) names the request; ``config`` defaults to
    ``PBFTConfig(request_timeout=40.0, status_interval=10.0, max_timeout=640.0)``,
    ``schedule`` to ``FaultSchedule.reliable(seed=seed)``; ``seed`` (default 0) also
    seeds the Byzantine behaviours.

    Returns once every non-Byzantine replica executed the instance, or, with what
    committed by then, at ``max_time`` (virtual) or once some replica entered a view
    beyond ``max_views`` (default 2k: every replica was primary twice; when fewer than
    2f+1 replicas share a candidate no value can ever commit).
    """
    k = len(keys)
    if len(proposals) != k:
        raise ValueError("one proposal per replica")
    pubs = [key.public_hex for key in keys]
    cfg = config or PBFTConfig(request_timeout=40.0, status_interval=10.0, max_timeout=640.0)
    byzantine = dict(byzantine or {})
    rng = random.Random(seed)
    nodes = []
    for i in range(k):
        if validators is not None:
            check = validators[i]
        else:
            check = _equals(proposals[i])
        rep = Replica(i, keys[i], pubs, validate=check, config=cfg)
        if i in byzantine:
            rep = ByzantineReplica(
                rep, byzantine[i], rng, SigningKey.from_seed(f"byz-client-{seed}".encode()), f"{instance}-byz"
            )
        nodes.append(rep)
    net = SimNetwork(nodes, schedule or FaultSchedule.reliable(seed=seed))
    req_key = (instance, 0)
    for i, value in enumerate(proposals):
        if value is not None:
            net.submit_at(0.0, Request.make(instance, 0, value), targets=[i], retry=1e12)
    honest = [i for i in range(k) if i not in byzantine]

    view_cap = 2 * k if max_views is None else max_views

    def done() -> bool:
        by = net.executed_by.get(req_key, {})
        return all(i in by for i in honest) or max(net.views) > view_cap

    net.run(max_time, stop=done)
    for i in honest:
        for entry in net.committed[i]:
            if entry.request is not None and entry.request.key == req_key and not entry.noop:
                return AgreementResult(
                    value=entry.request.value,
                    request=entry.request,
                    certificate=entry.certificate,
                    seq=entry.seq,
                    view=entry.view,
                    committed_by=tuple(sorted(net.executed_by.get(req_key, {}))),
                    replica_keys=tuple(pubs),
                    messages=net.stats.sent,
                    virtual_time=net.executed_by[req_key][i],
                    view_changes=max(net.views),
                )
    return AgreementResult(
        None, None, None, 0, max(net.views), (), tuple(pubs), net.stats.sent, net.now, max(net.views)
    )


def _equals(mine: Optional[str]) -> Callable[[str], bool]:
    return lambda value: mine is not None and value == mine
