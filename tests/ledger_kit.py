"""A chartered federation on a real ledger, for the ledger and ledger-cluster tests.

:class:`Federation` holds the enrolment authority's key, the enrolled clients' keys and
the ledger they share (any backend: memory, a SQLite file, a cluster over HTTP). It
builds what honest parties would append: enrolments signed by the authority,
transactions signed by enrolled clients, and round blocks certified by 2f+1 of the
committee the chain draws (each member signs the round statement computed from the
chain state), with stakes that follow from the decisions. Tests change one thing of an
honest block to check the refusal. Keys come from seeds, so runs are reproducible.

Importable from every test folder: ``tests/conftest.py`` puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Certificate, Charter, PooledPackage, metrics_digest, next_stakes, package_digest
from bcsfl_flower.ledger import (
    Block,
    Ledger,
    Transaction,
    build_block,
    make_charter_block,
    make_enrolment,
    make_transaction,
)


def seeded(name: str) -> SigningKey:
    """A reproducible key for ``name``."""
    return SigningKey.from_seed(f"ledger-kit|{name}".encode())


@dataclass
class Federation:
    """An enrolment authority, clients with keys, and the ledger they share.

    Parameters
    ----------
    ledger : Ledger
        Any backend.
    authority : SigningKey (default: the seeded "authority" key)
        The enrolment authority (the charter names it).
    keys : dict[str, SigningKey] (default: {})
        Enrolled identities' keys by id.
    producer : SigningKey (default: the seeded "producer" key)
        Signs the blocks this federation builds (their authority is their content).
    """

    ledger: Ledger
    authority: SigningKey = field(default_factory=lambda: seeded("authority"))
    keys: dict[str, SigningKey] = field(default_factory=dict)
    producer: SigningKey = field(default_factory=lambda: seeded("producer"))

    @classmethod
    def start(cls, ledger: Ledger, clients: int = 5, committee_size: int = 4,
              authority: SigningKey | None = None, **charter: Any) -> Federation:
        """Install the charter and enrol ``client-0`` .. ``client-{clients-1}``.

        ``charter`` passes more :class:`Charter` fields (e.g. ``max_model_bytes``).
        """
        fed = cls(ledger, authority or seeded("authority"))
        ledger.install_charter(make_charter_block(
            fed.authority, Charter(fed.authority.public_hex, committee_size, **charter)))
        fed.enrol(f"client-{i}" for i in range(clients))
        return fed

    @property
    def clients(self) -> list[str]:
        """Enrolled client ids, sorted."""
        return sorted(self.keys)

    def enrol(self, ids: Iterable[str], role: str = "client") -> None:
        """Enrol each id with a seeded key of its own (one block per enrolment)."""
        for cid in ids:
            self.keys[cid] = seeded(cid)
            self.ledger.register_identity(self.enrolment(cid, role))

    def enrolment(self, cid: str, role: str = "client") -> Transaction:
        """The authority's signed enrolment of ``cid`` with its seeded key."""
        return make_enrolment(self.authority, cid, seeded(cid).public_hex, role)

    def tx(self, cid: str, model: bytes | None = None, **data: Any) -> Transaction:
        """A transaction signed by ``cid``; ``model`` is stored and referenced as ``model-params``."""
        if model is not None:
            data["model-params"] = self.ledger.put_model(model)
        return make_transaction(self.keys[cid], data)

    def tx_block(self, txs: list[Transaction], head: Block | None = None) -> Block:
        """A transaction block on ``head`` (default: the ledger's head)."""
        return build_block(head or self.ledger.latest(), {"transactions": txs}, self.producer)

    def package(self, cid: str, server_round: int) -> PooledPackage:
        """``cid``'s signed package for ``server_round`` as the chain pools it (its bytes stored)."""
        digest = self.ledger.put_model(f"{cid} update {server_round}".encode())
        header = {"packet_id": f"{cid}-r{server_round}", "model_hash": digest, "timestamp": 1.7e9 + server_round,
                  "client_id": cid, "public_key": self.keys[cid].public_hex, "server_round": server_round,
                  "num_examples": 10, "metrics_hash": metrics_digest({})}
        return PooledPackage(header, self.keys[cid].sign(package_digest(header)).hex(), {})

    def pool_block(self, server_round: int, clients: Iterable[str] | None = None, head: Block | None = None) -> Block:
        """A block pooling ``clients``' packages (default: every enrolled client's), carried by the producer."""
        chosen = sorted(self.ledger.state().stakes()) if clients is None else list(clients)
        txs = [make_transaction(self.producer, {"pool": [self.package(c, server_round).to_json() for c in chosen]},
                                tx_id=f"pool:r{server_round}:{','.join(chosen)[:64]}")]
        return self.tx_block(txs, head)

    def round_block(self, server_round: int, *, rejected: Iterable[str] = (), model: bytes | None = None,
                    signers: int | None = None, head: Block | None = None, timestamp: float | None = None,
                    producer: SigningKey | None = None, **overrides: Any) -> Block:
        """An honest round block on ``head``: the pool decided on, ``rejected`` ones rejected.

        On the ledger's head with an empty pool, first appends :meth:`pool_block` (every
        client's package), as the relay pools what it received before the committee
        decides. ``signers`` limits how many committee members (in draw order) sign;
        ``overrides`` replace block data fields after signing (a dishonest producer).
        """
        if head is None or head.hash == self.ledger.latest().hash:
            if not self.ledger.state().pool:
                self.ledger.append(self.pool_block(server_round))
            head = self.ledger.latest()
        state = self.ledger.state_at(head.sequence_no)
        model = model if model is not None else f"global model of round {server_round}".encode()
        digest = self.ledger.put_model(model)
        rejected = set(rejected)
        inputs = [{"client_id": c, "packet_id": p.packet_id, "model_hash": p.model_hash}
                  for c, p in sorted(state.pool.items())]
        clients = [i["client_id"] for i in inputs]
        decisions = [{"client_id": c, "kept": c not in rejected, "reason": "cosine below floor" if c in rejected
                      else ""} for c in clients]
        assert state.charter is not None
        stakes = next_stakes(state.stakes(), [c for c in clients if c not in rejected], rejected,
                             state.charter.policy)
        statement = state.statement(server_round, head.hash, digest, inputs, decisions, [], stakes)
        committee = list(state.committee())
        chosen = committee[: len(committee) if signers is None else signers]
        certificate = Certificate(statement, tuple(statement.sign(m, self.keys[m]) for m in chosen))
        data = {"round": server_round, "model-params": digest, "inputs": inputs, "decisions": decisions,
                "refused": [], "stakes": stakes, "certificate": certificate.to_json(), "committee": committee}
        data.update(overrides)
        return build_block(head, data, producer or self.producer, timestamp=timestamp)

    def commit_round(self, server_round: int, **kwargs: Any) -> Block:
        """Build :meth:`round_block` and append it."""
        block = self.round_block(server_round, **kwargs)
        self.ledger.append(block)
        return block


def snapshot(path: Path, target: Path) -> None:
    """Copy a live SQLite ledger (its WAL included) to ``target``, as anyone with file access could."""
    with sqlite3.connect(path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
