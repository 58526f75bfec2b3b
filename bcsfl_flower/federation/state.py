"""The chain as a replicated state machine: who is enrolled, their stakes, the next committee.

BCS-FL (Sec. IV-B/C) has stakes rise for accepted clients and fall for rejected ones,
and the committee drawn by stake. For that to hold against a dishonest block producer,
the state after block ``r`` is a pure function of the state after block ``r-1`` and
block ``r``'s authorised contents; :meth:`FederationState.apply` is that function, and
ledger nodes, the relay, clients and ``bcsfl ledger verify`` all run it from genesis.

Blocks, after the fixed genesis block:

* **charter** (block 1 exactly): the federation's rules and the enrolment authority's
  key, signed by that key. Nothing else may be appended before it.
* **transactions**: signed transactions. One signed by the enrolment authority with
  ``data.enrol = {client_id, public_key, role}`` enrols an identity (a newcomer starts
  with ``policy.initial`` stake and cannot take a seat before it has taken part); one
  with ``data.pool`` pools clients' signed packages for the next round (their authority
  is each client's signature inside, so any carrier may post them: :mod:`.pool`); any
  other must be signed by an enrolled identity's key.
* **round**: a committed global model with its certificate (see
  :mod:`.certificate`): 2f+1 signatures of the committee drawn from the state before
  the block, over a statement binding the inputs, decisions and resulting stakes.
  The committee always has the charter's size: with fewer eligible clients the round
  is invalid (it fails loudly; it never shrinks).
  Its inputs and refused packages are exactly the pool: every package pooled since
  the last round block is decided on or refused, and nothing else is.
  Stakes move only by the certified decisions; packages that failed verification
  (``refused``) never move anyone's stake.

"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .certificate import MIN_COMMITTEE, Certificate, CertificateError, RoundStatement, digest_json, verify
from .pool import PooledPackage
from .stake import StakePolicy, draw_committee, next_stakes

__all__ = [
    "Charter", "FederationState", "Identity", "RuleViolation", "decisions_digest", "enrolment_data",
    "inputs_digest", "round_statement",
]

ROLES = ("client", "relay")
DEFAULT_MAX_MODEL_BYTES = 16 * 1024 * 1024


class RuleViolation(ValueError):
    """A block does not follow from the state before it; ``str(err)`` says why."""


class BlockLike(Protocol):
    """What the rules read of a block (a ledger ``Block`` has these)."""

    @property
    def sequence_no(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def last_hash(self) -> str: ...
    @property
    def public(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


def _is_hex(value: Any, length: int = 64) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def _int(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RuleViolation(f"{what} must be an integer >= {low}")
    return value


@dataclass(frozen=True)
class Charter:
    """The federation's rules, fixed in block 1 and signed by the enrolment authority.

    Parameters
    ----------
    enrolment_key : str
        Public key (hex) of the enrolment authority: the operator who admits clients,
        as Flower's operator admits SuperNodes.
    committee_size : int (default: 4)
        Coordinators drawn per round; at least 4 (3f+1 with f >= 1).
    policy : StakePolicy (default: StakePolicy())
        How stakes move.
    max_model_bytes : int (default: 16 MiB)
        Largest model (canonical bytes) the ledger stores; the strategy records the
        global model's exact size here.
    name : str (default: "bcsfl")
        A label for people.
    """

    enrolment_key: str
    committee_size: int = MIN_COMMITTEE
    policy: StakePolicy = field(default_factory=StakePolicy)
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    name: str = "bcsfl"

    def to_json(self) -> dict[str, Any]:
        """The charter block's ``data["charter"]``."""
        return {"enrolment": self.enrolment_key, "committee_size": self.committee_size,
                "stake_policy": self.policy.to_json(), "max_model_bytes": self.max_model_bytes, "name": self.name}

    @classmethod
    def from_json(cls, obj: Any) -> Charter:
        """Parse :meth:`to_json`'s form; raises :class:`RuleViolation` if malformed."""
        keys = {"enrolment", "committee_size", "stake_policy", "max_model_bytes", "name"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise RuleViolation(f"charter must have exactly {sorted(keys)}")
        if not _is_hex(obj["enrolment"]):
            raise RuleViolation("charter enrolment key is not 64-char lowercase hex")
        size = _int(obj["committee_size"], "charter committee_size", MIN_COMMITTEE)
        try:
            policy = StakePolicy.from_json(obj["stake_policy"])
        except ValueError as err:
            raise RuleViolation(f"charter {err}") from None
        if not isinstance(obj["name"], str):
            raise RuleViolation("charter name must be a string")
        return cls(obj["enrolment"], size, policy, _int(obj["max_model_bytes"], "charter max_model_bytes", 1),
                   obj["name"])


def enrolment_data(client_id: str, public_key: str, role: str = "client") -> dict[str, Any]:
    """The ``data`` of the transaction by which the enrolment authority admits an identity."""
    return {"enrol": {"client_id": client_id, "public_key": public_key, "role": role}}


def inputs_digest(inputs: list[dict[str, Any]]) -> str:
    """Digest of the packages aggregated: ``[{client_id, packet_id, model_hash}]`` by client id."""
    return digest_json(inputs)


def decisions_digest(decisions: list[dict[str, Any]], refused: list[dict[str, Any]]) -> str:
    """Digest of the committee's decisions and of the packages it refused."""
    return digest_json({"decisions": decisions, "refused": refused})


def round_statement(charter_hash: str, server_round: int, previous: str, model: str,
                    inputs: list[dict[str, Any]], decisions: list[dict[str, Any]],
                    refused: list[dict[str, Any]], stakes: Mapping[str, float], seed: str) -> RoundStatement:
    """The statement a round's committee signs (and every verifier recomputes).

    ``seed`` is the chain state's seed (:attr:`FederationState.seed`), the one the
    committee was drawn with; :meth:`FederationState.statement` fills it and the charter in.
    """
    return RoundStatement(charter_hash, server_round, previous, model, inputs_digest(inputs),
                          decisions_digest(decisions, refused), digest_json(dict(stakes)), seed)


@dataclass(frozen=True)
class Identity:
    """An enrolled identity as the chain knows it."""

    public_key: str
    role: str
    stake: float
    taken_part: bool
    enrolled_at: int  # sequenceNo of the block that enrolled it


@dataclass(frozen=True)
class FederationState:
    """The state after some block: charter, identities with stakes, last round, next seed."""

    height: int = 1
    head: str = ""
    charter: Charter | None = None
    charter_hash: str = ""
    identities: Mapping[str, Identity] = field(default_factory=dict)
    round: int = 0
    seed: str = ""
    model: str | None = None
    previous_model: str | None = None  # certified the round before ``model`` (the server momentum reads it)
    pool: Mapping[str, PooledPackage] = field(default_factory=dict)  # client id -> package, for the next round

    # -- what anyone can read off the state ---------------------------------------------
    def key(self, client_id: str) -> str | None:
        """The enrolled public key of ``client_id``, or None."""
        ident = self.identities.get(client_id)
        return ident.public_key if ident else None

    def stakes(self) -> dict[str, float]:
        """Every enrolled client's stake, sorted by id."""
        return {c: i.stake for c, i in sorted(self.identities.items()) if i.role == "client"}

    def eligible(self) -> dict[str, float]:
        """Who may take a seat: clients that have taken part (had an update kept).

        Until the charter's committee size have taken part (the federation's first
        rounds), every enrolled client is eligible, so a rejection cannot leave the chain
        without a committee for good.
        """
        clients = {c: i for c, i in sorted(self.identities.items()) if i.role == "client"}
        veterans = {c: i.stake for c, i in clients.items() if i.taken_part}
        size = self.charter.committee_size if self.charter else MIN_COMMITTEE
        return veterans if len(veterans) >= size else {c: i.stake for c, i in clients.items()}

    def committee_problem(self) -> str | None:
        """Why the chain cannot draw a full committee now (the round must fail), or None."""
        if self.charter is None:
            return "the chain has no charter"
        eligible = {c: s for c, s in self.eligible().items() if s > 0}
        size = self.charter.committee_size
        if len(eligible) >= size:
            return None
        return (f"only {len(eligible)} of {len(self.stakes())} enrolled clients can take a seat; the charter's "
                f"committee needs {size} (3f+1 with f >= 1; it never shrinks)")

    def committee(self) -> dict[str, str]:
        """The next round's committee, member -> public key, in draw order."""
        if self.charter is None:
            return {}
        members = draw_committee(self.eligible(), self.charter.committee_size, self.seed)
        return {m: self.identities[m].public_key for m in members}

    def statement(self, server_round: int, previous: str, model: str, inputs: list[dict[str, Any]],
                  decisions: list[dict[str, Any]], refused: list[dict[str, Any]],
                  stakes: Mapping[str, float]) -> RoundStatement:
        """The statement the next round's committee signs, for these contents."""
        return round_statement(self.charter_hash, server_round, previous, model, inputs, decisions, refused,
                               stakes, self.seed)

    # -- the transition -------------------------------------------------------------------
    def apply(self, block: BlockLike) -> FederationState:
        """The state after ``block``; raises :class:`RuleViolation` if it does not follow.

        The block's own integrity (hash, producer signature, each transaction's hash and
        signature, the link to the head) is the ledger's structural check, run before.
        """
        data = block.data
        moved = {"height": block.sequence_no + 1, "head": block.hash}
        if "charter" in data:
            return dataclasses.replace(self, **moved, **self._charter(block))
        if self.charter is None:
            raise RuleViolation("the chain has no charter: block 1 must be the federation's charter")
        if "round" in data:
            return dataclasses.replace(self, **moved, **self._round(block))
        if set(data) == {"transactions"}:
            return dataclasses.replace(self, **moved, **self._transactions(data["transactions"], block.sequence_no))
        raise RuleViolation(f"block is neither a charter, a round nor a transaction block (fields {sorted(data)})")

    def _charter(self, block: BlockLike) -> dict[str, Any]:
        if block.sequence_no != 1 or self.charter is not None:
            raise RuleViolation("a charter may only be block 1")
        if set(block.data) != {"charter"}:
            raise RuleViolation("the charter block holds only the charter")
        charter = Charter.from_json(block.data["charter"])
        if block.public != charter.enrolment_key:
            raise RuleViolation("the charter must be signed by the enrolment key it names")
        genesis_seed = digest_json({"bcsfl": "genesis-seed", "charter": block.hash})
        return {"charter": charter, "charter_hash": block.hash, "seed": genesis_seed}

    def _transactions(self, txs: Any, seq: int) -> dict[str, Any]:
        if not isinstance(txs, list):
            raise RuleViolation("data.transactions must be a list")
        assert self.charter is not None
        identities: dict[str, Identity] | None = None
        pool: dict[str, PooledPackage] | None = None
        keys = {i.public_key for i in self.identities.values()}
        for tx in txs:
            public, data = tx.get("public"), tx.get("data")
            if isinstance(data, dict) and "pool" in data:
                pool = dict(self.pool) if pool is None else pool
                self._pool(pool, self.identities if identities is None else identities, data, tx.get("id"))
            elif isinstance(data, dict) and "enrol" in data:
                if public != self.charter.enrolment_key:
                    raise RuleViolation(f"transaction {tx.get('id')}: enrolment not signed by the enrolment authority")
                identities = dict(self.identities) if identities is None else identities
                self._enrol(identities, data["enrol"], seq)
                keys.add(data["enrol"]["public_key"])
            elif public not in keys:
                raise RuleViolation(f"transaction {tx.get('id')}: signed by a key no enrolled identity holds")
        changed: dict[str, Any] = {} if identities is None else {"identities": identities}
        return changed if pool is None else {**changed, "pool": pool}

    @staticmethod
    def _pool(pool: dict[str, PooledPackage], identities: Mapping[str, Identity], data: dict, tx_id: Any) -> None:
        if set(data) != {"pool"} or not isinstance(data["pool"], list) or not data["pool"]:
            raise RuleViolation(f"transaction {tx_id}: a pool transaction holds only data.pool, a list of packages")
        for item in data["pool"]:
            try:
                package = PooledPackage.from_json(item)
            except ValueError as err:
                raise RuleViolation(f"transaction {tx_id}: {err}") from None
            ident = identities.get(package.client_id)
            problem = package.problem(ident.public_key if ident is not None and ident.role == "client" else None)
            if problem:
                raise RuleViolation(f"transaction {tx_id}: {problem}")
            # A client's newest package counts: a failed round's leftovers give way to the next round's,
            # and an older package replayed by a carrier changes nothing.
            if package.supersedes(pool.get(package.client_id)):
                pool[package.client_id] = package

    def _enrol(self, identities: dict[str, Identity], enrol: Any, seq: int) -> None:
        assert self.charter is not None
        if not isinstance(enrol, dict) or set(enrol) != {"client_id", "public_key", "role"}:
            raise RuleViolation("enrolment must be {client_id, public_key, role}")
        cid, key, role = enrol["client_id"], enrol["public_key"], enrol["role"]
        if not isinstance(cid, str) or not cid or len(cid) > 256:
            raise RuleViolation("enrolment client_id must be a string of 1 to 256 characters")
        if not _is_hex(key):
            raise RuleViolation(f"enrolment of {cid!r}: public key is not 64-char lowercase hex")
        if role not in ROLES:
            raise RuleViolation(f"enrolment of {cid!r}: role must be one of {ROLES}")
        known = identities.get(cid)
        if known is not None:
            if known.public_key != key or known.role != role:
                raise RuleViolation(f"identity {cid!r} is already enrolled with another key or role")
            return  # the same enrolment again changes nothing
        stake = self.charter.policy.initial if role == "client" else 0.0
        identities[cid] = Identity(key, role, stake, False, seq)

    def _round(self, block: BlockLike) -> dict[str, Any]:
        assert self.charter is not None
        data = block.data
        server_round = _int(data["round"], "data.round", 1)
        if server_round <= self.round:
            raise RuleViolation(f"round {server_round} does not follow the last certified round {self.round}")
        try:  # authority first: a round block without a well-formed certificate says so
            certificate = Certificate.from_json(data.get("certificate"))
        except CertificateError as err:
            raise RuleViolation(f"round {server_round}: no valid certificate: {err}") from None
        if data.get("transactions"):  # its authority is the certificate, which covers no transactions
            raise RuleViolation("a round block carries no transactions")
        model = data.get("model-params")
        if not _is_hex(model):
            raise RuleViolation("a round block's model-params must be a sha256 hex digest")
        inputs, decisions, refused = self._round_inputs(data)
        kept = [d["client_id"] for d in decisions if d["kept"]]
        rejected = [d["client_id"] for d in decisions if not d["kept"]]
        stakes = next_stakes(self.stakes(), kept, rejected, self.charter.policy)
        if data.get("stakes") != stakes:
            raise RuleViolation("data.stakes do not follow from the previous stakes and the certified decisions")
        self._covers_pool(inputs, refused)
        problem = self.committee_problem()
        if problem:
            raise RuleViolation(f"round {server_round}: {problem}")
        committee = self.committee()
        if "committee" in data and data["committee"] != list(committee):
            raise RuleViolation(f"data.committee {data['committee']} is not the committee the chain draws "
                                f"{list(committee)}")
        expected = self.statement(server_round, block.last_hash, model, inputs, decisions, refused, stakes)
        try:
            seed = verify(certificate, expected, committee)
        except CertificateError as err:
            raise RuleViolation(f"round {server_round}: {err}") from None
        identities = dict(self.identities)
        for cid, stake in stakes.items():
            identities[cid] = dataclasses.replace(identities[cid], stake=stake,
                                                  taken_part=identities[cid].taken_part or cid in kept)
        return {"identities": identities, "round": server_round, "seed": seed, "model": model,
                "previous_model": self.model, "pool": {}}

    def _round_inputs(self, data: Mapping[str, Any]) -> tuple[list, list, list]:
        inputs, decisions, refused = data.get("inputs"), data.get("decisions"), data.get("refused")
        if not isinstance(inputs, list) or not isinstance(decisions, list) or not isinstance(refused, list):
            raise RuleViolation("a round block needs inputs, decisions and refused lists")
        ids = []
        for item in inputs:
            if not isinstance(item, dict) or set(item) != {"client_id", "packet_id", "model_hash"}:
                raise RuleViolation("each input must be {client_id, packet_id, model_hash}")
            ident = self.identities.get(item["client_id"])
            if ident is None or ident.role != "client":
                raise RuleViolation(f"input from {item['client_id']!r}, which is not an enrolled client")
            if not isinstance(item["packet_id"], str) or not _is_hex(item["model_hash"]):
                raise RuleViolation("input packet_id must be a string and model_hash a sha256 hex digest")
            ids.append(item["client_id"])
        if ids != sorted(set(ids)):
            raise RuleViolation("inputs must be sorted by client id, one per client")
        decided = []
        for d in decisions:
            if not isinstance(d, dict) or not isinstance(d.get("client_id"), str) \
                    or not isinstance(d.get("kept"), bool) or not isinstance(d.get("reason"), str):
                raise RuleViolation("each decision needs client_id, kept (bool) and reason")
            for v in d.values():
                if isinstance(v, float) and not math.isfinite(v):
                    raise RuleViolation("decisions must hold finite numbers")
            decided.append(d["client_id"])
        if sorted(decided) != ids:
            raise RuleViolation("decisions must cover exactly the inputs, once each")
        for r in refused:
            if not isinstance(r, dict) or set(r) != {"client_id", "packet_id", "reason"} \
                    or not all(isinstance(v, str) for v in r.values()):
                raise RuleViolation("each refused package must be {client_id, packet_id, reason}")
        return inputs, decisions, refused

    def _covers_pool(self, inputs: list[dict], refused: list[dict]) -> None:
        """The round decides on exactly the pool: each pooled package an input or refused, nothing else."""
        pooled = {(c, p.packet_id, p.model_hash) for c, p in self.pool.items()}
        used = [(i["client_id"], i["packet_id"], i["model_hash"]) for i in inputs]
        for r in refused:
            entry = self.pool.get(r["client_id"])
            used.append((r["client_id"], r["packet_id"], entry.model_hash if entry else ""))
        if len(set(used)) != len(used) or set(used) != pooled:
            missing = sorted(c for c, _, _ in pooled - set(used))
            extra = sorted(c for c, _, _ in set(used) - pooled)
            raise RuleViolation(f"inputs and refused must be exactly the round's pool (missing {missing[:5]}, "
                                f"not pooled {extra[:5]})")
