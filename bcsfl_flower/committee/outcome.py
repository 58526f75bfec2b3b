"""One round's committee outcome, whichever way the committee ran, and its block data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..crypto import SigningKey
from .agreement import QuorumCertificate
from .verify import Rejection, VerifiedUpdate

__all__ = ["RoundOutcome", "block_data"]


@dataclass
class RoundOutcome:
    """What the strategy commits for a round.

    ``decisions`` are the filter's per-client records (JSON dicts with ``client_id``,
    ``kept``, ``cosine``, ``norm``, ``loss_change``, ``reason``); ``producer`` signs the
    block (the primary coordinator in-process, the relay's own key with coordinators on
    nodes, where the certificate carries the coordinators' signatures).
    """

    members: list[str]
    public_keys: dict[str, str]
    certificate: QuorumCertificate | None
    candidate_bytes: bytes | None
    decisions: list[dict]
    dissenters: list[str]
    producer: SigningKey | None
    filter_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    consensus: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> list[str]:  # noqa: D102
        return [d["client_id"] for d in self.decisions if d["kept"]]

    @property
    def rejected(self) -> list[str]:  # noqa: D102
        return [d["client_id"] for d in self.decisions if not d["kept"]]


def block_data(
    outcome: RoundOutcome,
    *,
    server_round: int,
    seed: str,
    digest: str,
    transaction: Any,
    updates: list[VerifiedUpdate],
    rejections: list[Rejection],
    stakes: dict[str, float],
    epsilon: dict[str, float],
    identities: dict[str, str],
) -> dict[str, Any]:
    """The ``data`` of a round block (fields documented in the README)."""
    return {
        "round": server_round,
        "transactions": [transaction],
        "model-params": digest,
        "seed": seed,
        "committee": [
            {"member": m, "public": outcome.public_keys.get(m, ""), "stake": stakes.get(m, 0.0)} for m in outcome.members
        ],
        "quorum": outcome.certificate.to_json() if outcome.certificate else None,
        "consensus": outcome.consensus,
        "dissenters": outcome.dissenters,
        "accepted": outcome.kept,
        "rejected": [{"client_id": d["client_id"], "reason": d["reason"]} for d in outcome.decisions if not d["kept"]]
        + [{"client_id": r.client_id, "reason": r.reason} for r in rejections],
        "decisions": outcome.decisions,
        "packages": {u.client_id: u.package.model_hash for u in updates},
        "filter": outcome.filter_info,
        "stakes": stakes,
        "epsilon": dict(sorted(epsilon.items())),
        "identities": identities,
    }
