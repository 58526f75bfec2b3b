"""What a round's committee certifies, and the round block built from it (BCS-FL, Sec. IV-C, Table 2).

:class:`RoundRecord` is the part of a round block the certificate covers: the model
digest, the exact packages aggregated (``inputs``), the filter's ``decisions``, the
packages ``refused`` at verification, and the stake book after the round. Every
member builds it with :func:`round_record` from the state it read off its own ledger,
so honest members build the same record and sign the same
:class:`~bcsfl_flower.federation.RoundStatement`. :func:`block_data` lays it out with
the certificate and a few informational fields (not certified; nothing in the rules
reads them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..federation import Certificate, FederationState, RoundStatement, next_stakes
from .verify import Rejection, VerifiedUpdate

__all__ = ["RoundOutcome", "RoundRecord", "block_data", "client_key", "round_record"]


def client_key(state: FederationState, client_id: str) -> str | None:
    """The registered key of an enrolled *client* (a relay's identity sends no packages)."""
    ident = state.identities.get(client_id)
    return ident.public_key if ident is not None and ident.role == "client" else None


@dataclass(frozen=True)
class RoundRecord:
    """The certified contents of a round block (field names as in the block's ``data``)."""

    model: str
    inputs: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    refused: list[dict[str, str]]
    stakes: dict[str, float]

    @property
    def kept(self) -> list[str]:  # noqa: D102
        return [d["client_id"] for d in self.decisions if d["kept"]]

    @property
    def rejected(self) -> list[str]:  # noqa: D102
        return [d["client_id"] for d in self.decisions if not d["kept"]]

    def statement(self, state: FederationState, server_round: int) -> RoundStatement:
        """The statement this record makes right after ``state``'s head."""
        return state.statement(server_round, state.head, self.model, self.inputs, self.decisions, self.refused,
                               self.stakes)

    def to_json(self) -> dict[str, Any]:
        """Block-data form: ``model-params``, ``inputs``, ``decisions``, ``refused``, ``stakes``."""
        return {"model-params": self.model, "inputs": self.inputs, "decisions": self.decisions,
                "refused": self.refused, "stakes": self.stakes}

    @classmethod
    def from_json(cls, obj: Any) -> RoundRecord:
        """Parse :meth:`to_json`'s form (a member's copy); ``ValueError`` if malformed.

        Only the shape is checked here: whoever uses a copy compares its statement with
        the certified one, which binds every field.
        """
        if not isinstance(obj, dict) or not {"model-params", "inputs", "decisions", "refused", "stakes"} <= set(obj):
            raise ValueError("a round record needs model-params, inputs, decisions, refused and stakes")
        if not isinstance(obj["model-params"], str) or not isinstance(obj["stakes"], dict) \
                or not all(isinstance(obj[k], list) for k in ("inputs", "decisions", "refused")):
            raise ValueError("malformed round record")
        return cls(obj["model-params"], obj["inputs"], obj["decisions"], obj["refused"], obj["stakes"])


def round_record(state: FederationState, model: str, updates: Sequence[VerifiedUpdate],
                 refused: Sequence[Rejection], decisions: Sequence[Mapping[str, Any]]) -> RoundRecord:
    """The record of a round: ``updates`` aggregated under ``decisions`` into ``model``.

    ``updates`` and ``refused`` are the round's pool, verified (:func:`~.verify.verify_pool`):
    refused packages are recorded with their packet ids and never move a stake. Stakes follow
    :func:`~bcsfl_flower.federation.next_stakes` from ``state``'s book and the decisions.
    """
    assert state.charter is not None, "a round needs a chartered federation"
    inputs = sorted(({"client_id": u.client_id, "packet_id": u.package.packet_id, "model_hash": u.package.model_hash}
                     for u in updates), key=lambda item: item["client_id"])
    decided = [dict(d) for d in decisions]
    kept = [d["client_id"] for d in decided if d["kept"]]
    rejected = [d["client_id"] for d in decided if not d["kept"]]
    stakes = next_stakes(state.stakes(), kept, rejected, state.charter.policy)
    gone = sorted(({"client_id": r.client_id, "packet_id": r.packet_id, "reason": r.reason} for r in refused),
                  key=lambda r: (r["client_id"], r["packet_id"]))
    return RoundRecord(model, inputs, decided, gone, stakes)


@dataclass
class RoundOutcome:
    """What the committee produced for one round, whichever way it ran.

    ``certificate`` and ``record`` are None when no quorum formed; ``candidate`` is the
    committed model's tensors (its canonical bytes hash to ``record.model``).
    """

    committee: list[str]
    certificate: Certificate | None = None
    record: RoundRecord | None = None
    candidate: dict[str, np.ndarray] | None = None
    candidate_bytes: bytes = b""  # its canonical bytes, when computed here (they hash to ``record.model``)
    dissent: list[dict[str, str]] = field(default_factory=list)
    consensus: dict[str, Any] = field(default_factory=dict)
    filter_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    bytes_moved: int = 0  # array bytes between the relay and the members
    bytes_fetched: int = 0  # bytes the members read from their ledgers' model stores

    @property
    def committed(self) -> bool:  # noqa: D102
        return self.certificate is not None and self.record is not None and self.candidate is not None


def block_data(outcome: RoundOutcome, *, server_round: int, epsilon: Mapping[str, float],
               num_examples: int) -> dict[str, Any]:
    """The ``data`` of a round block.

    Certified (what :meth:`FederationState.apply` checks): ``round``, ``model-params``,
    ``inputs``, ``decisions``, ``refused``, ``stakes``, ``certificate`` and ``committee``.
    Informational: ``dissent`` (members whose statement differs, outvoted), ``consensus``
    (protocol facts), ``filter``, ``epsilon`` (the clients' signed privacy reports) and
    ``num`` (examples behind the kept updates, the paper's transaction field).
    """
    assert outcome.certificate is not None and outcome.record is not None
    return {
        "round": server_round,
        **outcome.record.to_json(),
        "certificate": outcome.certificate.to_json(),
        "committee": list(outcome.committee),
        "dissent": outcome.dissent,
        "consensus": outcome.consensus,
        "filter": outcome.filter_info,
        "epsilon": dict(sorted(epsilon.items())),
        "num": int(num_examples),
    }
