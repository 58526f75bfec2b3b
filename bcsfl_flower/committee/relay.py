"""The committee on client nodes: the ServerApp relays, the coordinators decide.

Two message rounds over Flower's Grid, both TRAIN messages that ``bcsfl_mod`` answers
without calling the user's train function:

1. *coordinate*: every member gets the global model and all packages, computes the
   candidate itself and returns a signed PREPARE (the first member also returns the
   candidate's tensors, so the relay need not hold the root set).
2. *commit*: every member gets the PREPAREs; one that sees 2f+1 valid PREPAREs for
   the hash it computed itself returns a signed COMMIT, the signature the ledger's
   quorum certificate holds.

The relay can drop or delay messages (then no certificate forms and the round keeps
the old model); it cannot forge a vote.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..client.coordinator_role import CANDIDATE_KEY, ROLE_KEY, VOTE_KEY, pack_packages
from ..crypto import verify_signature
from ..package import arrays_to_numpy, model_hash
from .agreement import QuorumCertificate, Vote, prepare_digest, quorum_size

__all__ = ["NodeDecision", "RelayCommittee", "record_bytes"]


def record_bytes(content: RecordDict) -> int:
    """Bytes of array data a message carries (what dominates its size)."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


@dataclass
class NodeDecision:
    """What the relayed committee produced for one round."""

    certificate: QuorumCertificate | None
    candidate: dict[str, np.ndarray] | None
    decisions: list[dict]
    dissenters: list[str]
    log: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class RelayCommittee:
    """Runs one round's agreement among coordinator nodes through the Grid.

    Parameters
    ----------
    timeout : float
        Seconds to wait for each of the two message rounds.
    drop_votes_from : set[str]
        Test hook (a misbehaving relay): members whose votes are dropped.
    """

    timeout: float = 600.0
    drop_votes_from: set[str] = field(default_factory=set)

    def decide(
        self,
        grid: Grid,
        *,
        server_round: int,
        members: list[str],
        node_of: Mapping[str, int],
        identities: Mapping[str, str | None],
        global_arrays: ArrayRecord,
        contents: list[RecordDict],
        newcomers: list[str],
    ) -> NodeDecision:
        """Collect PREPAREs, then COMMITs; certify the hash 2f+1 members committed."""
        out = NodeDecision(None, None, [], list(members))
        reachable = [m for m in members if m in node_of]
        threshold = quorum_size(len(members))
        messages = []
        for i, member in enumerate(reachable):
            content = RecordDict({
                "arrays": global_arrays,
                "config": ConfigRecord({"server-round": server_round, ROLE_KEY: "coordinate",
                                        "bcsfl.newcomers": list(newcomers), "bcsfl.return-candidate": i == 0}),
            })
            pack_packages(contents, content)
            out.bytes_sent += record_bytes(content)
            messages.append(Message(content=content, dst_node_id=node_of[member], message_type=MessageType.TRAIN))
        prepares, candidate = self._votes(grid, messages, out)
        valid = {
            m: v for m, v in prepares.items()
            if v.get("value") and identities.get(m) == v["public-key"]
            and verify_signature(v["public-key"], v["prepare-sign"], prepare_digest(server_round, v["value"]))
        }
        counts = Counter(v["value"] for v in valid.values())
        if not counts or counts.most_common(1)[0][1] < threshold:
            out.log.append(f"no hash prepared by {threshold} members: {dict(counts)}")
            return out
        value = counts.most_common(1)[0][0]
        agreeing = [m for m in members if m in valid and valid[m]["value"] == value]
        prepared = ConfigRecord({
            "members": agreeing,
            "publics": [valid[m]["public-key"] for m in agreeing],
            "signs": [valid[m]["prepare-sign"] for m in agreeing],
        })
        commit_msgs = [
            Message(content=RecordDict({
                "config": ConfigRecord({"server-round": server_round, ROLE_KEY: "commit", "bcsfl.value": value}),
                "bcsfl.prepares": prepared,
            }), dst_node_id=node_of[m], message_type=MessageType.TRAIN)
            for m in reachable
        ]
        commits, _ = self._votes(grid, commit_msgs, out)
        votes = tuple(
            Vote(m, v["public-key"], value, v["commit-sign"])
            for m, v in commits.items()
            if v.get("value") == value and identities.get(m) == v["public-key"]
            and verify_signature(v["public-key"], v["commit-sign"], bytes.fromhex(value))
        )
        out.dissenters = [m for m in members if m not in {v.member for v in votes}]
        first = prepares.get(reachable[0], {}) if reachable else {}
        out.decisions = json.loads(first.get("decisions", "[]"))
        if len(votes) < threshold:
            out.log.append(f"only {len(votes)} commits for {value[:12]}, {threshold} needed")
        elif candidate is None or model_hash(candidate) != value:
            out.log.append("the first member's candidate does not hash to the certified value")
        else:
            out.certificate = QuorumCertificate(value, threshold, votes)
            out.candidate = candidate
        return out

    def _votes(
        self, grid: Grid, messages: list[Message], out: NodeDecision
    ) -> tuple[dict[str, dict], dict[str, np.ndarray] | None]:
        """Send, wait; return each member's vote record (minus the test hook's) and any candidate."""
        candidate = None
        votes: dict[str, dict] = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            if reply.has_error() or VOTE_KEY not in reply.content.config_records:
                continue
            out.bytes_received += record_bytes(reply.content)
            vote = dict(reply.content.config_records[VOTE_KEY])
            member = str(vote.get("member"))
            if "error" in vote:
                out.log.append(f"{member}: {vote['error']}")
                continue
            if member in self.drop_votes_from:
                continue
            votes[member] = vote
            if CANDIDATE_KEY in reply.content.array_records:
                candidate = arrays_to_numpy(reply.content.array_records[CANDIDATE_KEY])
        return votes, candidate
