"""A small federation on a real ledger, and an honest committee that certifies rounds.

The attacks in this folder start from honest state built here: a charter signed by the
enrolment authority, enrolled clients with their own keys, and rounds certified by the
committee the chain draws (2f+1 signatures over the round statement).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.federation import Certificate, Charter, next_stakes
from bcsfl_flower.ledger import Block, Ledger, build_block
from bcsfl_flower.ledger.replay import make_charter_block, make_enrolment


@dataclass
class Federation:
    """An enrolment authority, clients with keys, and the ledger they share."""

    ledger: Ledger
    authority: SigningKey = field(default_factory=SigningKey.generate)
    keys: dict[str, SigningKey] = field(default_factory=dict)
    producer: SigningKey = field(default_factory=SigningKey.generate)

    @classmethod
    def start(cls, ledger: Ledger, clients: int = 6, committee_size: int = 4) -> Federation:
        fed = cls(ledger)
        ledger.install_charter(make_charter_block(fed.authority, Charter(fed.authority.public_hex, committee_size)))
        fed.enrol(f"client-{i}" for i in range(clients))
        return fed

    def enrol(self, ids: Iterable[str]) -> None:
        for cid in ids:
            self.keys[cid] = SigningKey.generate()
            self.ledger.register_identity(make_enrolment(self.authority, cid, self.keys[cid].public_hex))

    def round_block(self, server_round: int, *, rejected: Iterable[str] = (), model: bytes | None = None,
                    signers: int | None = None, head: Block | None = None, timestamp: float | None = None,
                    producer: SigningKey | None = None, **overrides) -> Block:
        """An honest round block: every enrolled client's package in, ``rejected`` ones rejected.

        ``overrides`` replace block data fields after signing (what a dishonest producer
        would do); ``signers`` limits how many committee members sign.
        """
        state = self.ledger.state()
        head = head or self.ledger.latest()
        model = model if model is not None else f"model of round {server_round}".encode()
        digest = self.ledger.put_model(model)
        clients = sorted(state.stakes())
        rejected = set(rejected)
        inputs = [{"client_id": c, "packet_id": f"{c}-r{server_round}", "model_hash": sha256_hex(c.encode())}
                  for c in clients]
        decisions = [{"client_id": c, "kept": c not in rejected, "reason": "cosine 0.0" if c in rejected else ""}
                     for c in clients]
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

    def commit_round(self, server_round: int, **kwargs) -> Block:
        block = self.round_block(server_round, **kwargs)
        self.ledger.append(block)
        return block


def snapshot(path: Path, target: Path) -> None:
    """Copy a live SQLite ledger (its WAL included) to ``target``, as an attacker with file access could."""
    with sqlite3.connect(path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
