"""The committee on client nodes: the ServerApp relays, the coordinators decide (BCS-FL, Sec. IV-C).

One message round over Flower's Grid (TRAIN messages that ``bcsfl_mod`` answers with
:mod:`.coordinator_role`, without calling the user's train function): every member of
the committee the chain draws is told the round; it reads the round's pool and the
certified global model off its own ledger (the relay sends the initial model only
before the chain certifies one), fetches each pooled package's parameters from the
ledger's store by hash, computes the record and the statement itself, and returns its
signature over the statement with its copy of the record (the first member reachable
also returns the candidate's tensors). The relay forwards no packages: what the
members decide on is what the chain pooled. A statement 2f+1 members signed is the round certificate; the relay writes a
block only from it, with any member's copy whose statement is that one, and lists a
member whose statement differs (outvoted) in the block's informational ``dissent``. When
the member that sent the candidate was outvoted, the relay asks an agreeing member for
its own.

The relay can drop or delay messages (then no certificate forms and the round keeps
the old model); it cannot forge a signature, withhold a pooled package, nor make the
certificate cover a model, inputs, decisions or stakes that 2f+1 members did not compute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..federation import Certificate, CertificateError, FederationState, RoundStatement, Signature, quorum_size
from ..federation import valid_signers
from ..package import arrays_to_numpy, model_hash
from ..protocol import (
    CANDIDATE_KEY, CHAIN_ROUND_KEY, RETURN_CANDIDATE_KEY, ROLE_CANDIDATE, ROLE_COORDINATE, ROLE_KEY, STATEMENT_KEY,
    VOTE_KEY,
)
from .outcome import RoundOutcome, RoundRecord

__all__ = ["MemberVote", "RelayCommittee", "record_bytes"]


def record_bytes(content: RecordDict) -> int:
    """Bytes of array data a message carries (what dominates its size)."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


def _states(record: RoundRecord, state: FederationState, chain_round: int, digest: str) -> bool:
    """Whether ``record`` makes the statement ``digest`` (a malformed copy makes none)."""
    try:
        return record.statement(state, chain_round).digest == digest
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class MemberVote:
    """One member's answer: its signature over its statement, and its copy of the record."""

    signature: Signature
    statement: RoundStatement
    record: RoundRecord
    candidate: dict[str, np.ndarray] | None

    @classmethod
    def parse(cls, vote: Mapping, candidate: dict[str, np.ndarray] | None) -> MemberVote:
        """From the reply's vote record; ``ValueError``/``CertificateError`` if malformed."""
        statement = RoundStatement.from_json(json.loads(str(vote["statement"])))
        signature = Signature(str(vote["member"]), str(vote["public-key"]), str(vote["signature"]),
                              str(vote["beacon"]))
        return cls(signature, statement, RoundRecord.from_json(json.loads(str(vote["record"]))), candidate)


@dataclass
class RelayCommittee:
    """Runs one round's committee among coordinator nodes through the Grid.

    Parameters
    ----------
    timeout : float (default: 600.0)
        Seconds to wait for the members' answers.
    drop_votes_from : set[str] (default: empty)
        Test hook (a misbehaving relay): members whose answers are dropped.
    """

    timeout: float = 600.0
    drop_votes_from: set[str] = field(default_factory=set)

    def decide(
        self,
        grid: Grid,
        *,
        state: FederationState,
        server_round: int,
        chain_round: int | None = None,
        node_of: Mapping[str, int],
        global_arrays: ArrayRecord | None = None,
    ) -> RoundOutcome:
        """Collect the members' signed statements; certify the one 2f+1 of them signed.

        ``server_round`` is Flower's (the packages carry it), ``chain_round`` the round the
        statement certifies (default: ``server_round``). ``node_of`` maps members to
        Flower node ids; ``global_arrays`` is the initial model, sent only while the chain
        certifies none.
        """
        chain_round = chain_round or server_round
        t0 = time.perf_counter()
        committee = state.committee()
        members = list(committee)
        out = RoundOutcome(members, consensus={"protocol": "statement signatures relayed to coordinator nodes"})
        reachable = [m for m in members if m in node_of]
        messages = []
        for i, member in enumerate(reachable):
            content = RecordDict({"config": ConfigRecord(
                {"server-round": server_round, CHAIN_ROUND_KEY: chain_round, ROLE_KEY: ROLE_COORDINATE,
                 RETURN_CANDIDATE_KEY: i == 0})})
            if global_arrays is not None:
                content["arrays"] = global_arrays
            out.bytes_moved += record_bytes(content)
            messages.append(Message(content=content, dst_node_id=node_of[member], message_type=MessageType.TRAIN))
        votes = self._collect(grid, messages, committee, out)
        by_digest: dict[str, list[str]] = {}
        for m in members:
            if m in votes:
                by_digest.setdefault(votes[m].statement.digest, []).append(m)
        needed = quorum_size(len(members))
        winner = next((d for d, signers in by_digest.items() if len(signers) >= needed), None)
        out.timings = {"committee_on_nodes": time.perf_counter() - t0}
        if winner is None:
            out.log.append(f"no statement signed by {needed} members: "
                           f"{ {d[:12]: len(s) for d, s in by_digest.items()} }")
            return out
        agreeing = by_digest[winner]
        out.dissent = [{"member": m, "statement": votes[m].statement.digest} for m in members
                       if m in votes and m not in agreeing]
        statement = votes[agreeing[0]].statement
        out.certificate = Certificate(statement, tuple(votes[m].signature for m in agreeing))
        # Any agreeing member's copy will do: its statement binds every field.
        out.record = next((votes[m].record for m in agreeing if _states(votes[m].record, state, chain_round, winner)),
                          None)
        out.candidate = self._candidate(grid, server_round, statement, agreeing, votes, node_of, out)
        if out.record is None:
            out.log.append("no member's copy of the record matches the statement it signed")
        if out.candidate is None:
            out.log.append("no agreeing member sent a candidate that hashes to the certified model")
        out.timings = {"committee_on_nodes": time.perf_counter() - t0}
        return out

    def _collect(self, grid: Grid, messages: list[Message], committee: Mapping[str, str],
                 out: RoundOutcome) -> dict[str, MemberVote]:
        """Send, wait; each member's vote whose signature is valid under its registered key."""
        votes: dict[str, MemberVote] = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            if reply.has_error() or VOTE_KEY not in reply.content.config_records:
                continue
            out.bytes_moved += record_bytes(reply.content)
            vote = dict(reply.content.config_records[VOTE_KEY])
            member = str(vote.get("member"))
            if "error" in vote:
                out.log.append(f"{member}: {vote['error']}")
                continue
            if member in self.drop_votes_from or member not in committee or member in votes:
                continue
            candidate = reply.content.array_records.get(CANDIDATE_KEY)
            try:
                parsed = MemberVote.parse(vote, arrays_to_numpy(candidate) if candidate is not None else None)
            except (KeyError, ValueError, CertificateError) as err:
                out.log.append(f"{member}: malformed answer ({err})")
                continue
            if valid_signers(Certificate(parsed.statement, (parsed.signature,)), committee):
                votes[member] = parsed
                out.bytes_fetched += int(vote.get("fetched-bytes", 0))
            else:
                out.log.append(f"{member}: signature does not verify under its enrolled key")
        return votes

    def _candidate(self, grid: Grid, server_round: int, statement: RoundStatement, agreeing: list[str],
                   votes: Mapping[str, MemberVote], node_of: Mapping[str, int],
                   out: RoundOutcome) -> dict[str, np.ndarray] | None:
        """The certified model's tensors: from the answers, else asked of agreeing members in turn."""
        for m in agreeing:
            got = votes[m].candidate
            if got is not None and model_hash(got) == statement.model:
                return got
        for m in agreeing:
            ask = Message(content=RecordDict({"config": ConfigRecord(
                {"server-round": server_round, ROLE_KEY: ROLE_CANDIDATE, STATEMENT_KEY: statement.digest})}),
                dst_node_id=node_of[m], message_type=MessageType.TRAIN)
            for reply in grid.send_and_receive([ask], timeout=self.timeout):
                if reply.has_error() or CANDIDATE_KEY not in reply.content.array_records:
                    continue
                out.bytes_moved += record_bytes(reply.content)
                got = arrays_to_numpy(reply.content.array_records[CANDIDATE_KEY])
                if model_hash(got) == statement.model:
                    return got
        return None
