"""PBFT consensus as a sans-IO state machine, plus a seeded faulty-network simulator.

Modules: ``messages`` (wire types, canonical encoding, signatures, outputs),
``quorum`` (commit quorum certificates), ``replica`` (normal case, checkpoints,
catch-up), ``viewchange`` (view change / new view), ``simnet`` (discrete-event
network with faults), ``byzantine`` (misbehaving replicas), ``scenario`` (random fault
schedules and the safety / liveness oracle), ``bugs`` (planted bugs the fuzzer must
find), ``agree`` (one-shot agreement on a candidate hash for the committee).
"""

from .agree import AgreementResult, agree
from .messages import (
    Broadcast, CancelTimer, Committed, CommittedEntry, Request, Send, SetTimer, ViewEntered,
)
from .quorum import QuorumCertificate, max_faulty, quorum_size, verify
from .replica import PBFTConfig, Replica, StableCheckpoint
from .simnet import Crash, FaultSchedule, Partition, SimNetwork

__all__ = [
    "AgreementResult", "agree", "Broadcast", "CancelTimer", "Committed", "CommittedEntry",
    "Request", "Send", "SetTimer", "ViewEntered", "QuorumCertificate", "max_faulty",
    "quorum_size", "verify", "PBFTConfig", "Replica", "StableCheckpoint", "Crash",
    "FaultSchedule", "Partition", "SimNetwork",
]
