"""PBFT consensus as a sans-IO state machine, plus a seeded faulty-network simulator.

Castro & Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999 (section numbers below
are that paper's; the TOCS 2002 article extends it): n = 3f + 1 replicas order client
requests while up to f are Byzantine. The replica, :class:`~.replica.Replica`, is one dispatcher
over small state objects, each in its module with the paper's section:

- ``requests``   pending client requests, relaying to the primary, request timer (4.1, 4.4)
- ``slots``      pre-prepares, prepares, commits, prepared certificates, request bodies (4.2)
- ``bodies``     fetching a request body by digest (view changes carry digests only, 4.4)
- ``execution``  in-order execution, the executed log above the stable checkpoint,
  state digest (4.2)
- ``dedup``      the bounded at-most-once record by (client, rid) (4.1), part of checkpoints
- ``checkpoint`` stable checkpoint and water marks (4.3); the status heartbeat and
  catch-up from certified committed entries
- ``transfer``   checkpoints taking effect (log truncation, application checkpoints) and
  state transfer to a stable checkpoint (4.3)
- ``viewchange`` view change and new view (4.4) with the liveness rules of 4.5.2, and
  the pure checks of VIEW-CHANGE and NEW-VIEW messages
- ``outbox``     the outputs of one call: messages to send, timers, committed entries

Around them: ``state`` (:class:`~.state.PBFTConfig`, the :class:`~.state.ReplicaStatus`
and :class:`~.state.TimerKind` enums), ``messages`` and ``outputs`` (wire types,
canonical encoding, signatures; what the replica asks its driver to do), ``limits``
(every message type's size bound), ``quorum``
(2f+1 and the commit quorum certificate anyone can check), ``simnet`` (discrete-event
network with faults), ``byzantine`` (misbehaving replicas), ``scenario`` (random fault
schedules and the safety / liveness oracle), ``bugs`` (planted bugs the fuzzer must
find), ``agree`` (one-shot agreement on one value, used by the benchmark and tests; the
committee's own agreement is :mod:`bcsfl_flower.committee.pbft_agreement`).
"""

from .agree import AgreementResult, agree
from .messages import (
    Broadcast, CancelTimer, Committed, CommittedEntry, Request, Send, SetTimer, ViewEntered,
)
from .limits import message_bounds
from .outputs import CheckpointDue, FetchState, Stabilised
from .quorum import QuorumCertificate, max_faulty, quorum_size, verify
from .replica import PBFTConfig, Replica, StableCheckpoint
from .simnet import Crash, FaultSchedule, Partition, SimNetwork
from .state import ReplicaStatus, TimerKind

__all__ = [
    "AgreementResult", "agree", "Broadcast", "CancelTimer", "Committed", "CommittedEntry",
    "Request", "Send", "SetTimer", "ViewEntered", "CheckpointDue", "FetchState", "Stabilised", "message_bounds",
    "QuorumCertificate", "max_faulty",
    "quorum_size", "verify", "PBFTConfig", "Replica", "StableCheckpoint", "Crash",
    "FaultSchedule", "Partition", "SimNetwork", "ReplicaStatus", "TimerKind",
]
