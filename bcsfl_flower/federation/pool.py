"""The round pool: the packages a round must decide on (BCS-FL, Sec. IV-A/B: clients submit through the ledger).

A client's signed package header enters the chain in a transaction whose
``data.pool`` lists packages in :meth:`PooledPackage.to_json`'s form: the header
fields, the client's signature (hex) and the metrics it signed. Anyone may carry it (the client
itself, or the relay that received it): its authority is the client's Ed25519
signature over the package digest, checked against the key the chain enrolled for
that client, so a carrier can withhold a package from its own posts but can neither
forge nor alter one (a ledger node's HTTP edge still takes writes only from enrolled
identities, the relay's included). The parameters themselves sit in the ledger's
content-addressed store under the header's ``model_hash``; a block pooling parameters
the store does not hold is refused, and ``ledger verify`` checks them like global models.

The pool after a block holds, for each enrolled client, the newest package (by its
signed timestamp) pooled since the last round block: a round that failed leaves its
packages to be replaced by the next round's, and an older package replayed by a carrier
changes nothing. A round block must account for every pooled package, each either an input
(decided) or refused with its packet id, and for nothing else; so whatever a relay
forwards, the round decides on the full pool or does not commit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..crypto import sha256_hex, verify_signature

__all__ = ["PooledPackage", "metrics_digest", "package_digest"]

#: The signed header fields, in their JSON (snake_case) names.
HEADER_FIELDS = ("packet_id", "model_hash", "timestamp", "client_id", "public_key", "server_round",
                 "num_examples", "metrics_hash")


def package_digest(header: Mapping[str, Any]) -> bytes:
    """The bytes a package's signature covers: every header field but the signature."""
    fields = {k: header[k] for k in HEADER_FIELDS}
    fields["timestamp"] = repr(float(fields["timestamp"]))
    fields["server_round"] = int(fields["server_round"])
    fields["num_examples"] = int(fields["num_examples"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def metrics_digest(metrics: Mapping[str, object]) -> str:
    """SHA-256 (hex) of the metrics as canonical JSON (sorted keys, floats via repr)."""
    return sha256_hex(json.dumps(dict(metrics), sort_keys=True, separators=(",", ":"), allow_nan=True).encode())


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


@dataclass(frozen=True)
class PooledPackage:
    """A package header as the chain pools it (the parameters are in the model store)."""

    header: Mapping[str, Any]  # HEADER_FIELDS
    signature: str  # hex
    metrics: Mapping[str, Mapping[str, Any]]  # record name -> {metric: number or list of numbers}

    @property
    def client_id(self) -> str:  # noqa: D102
        return str(self.header["client_id"])

    @property
    def packet_id(self) -> str:  # noqa: D102
        return str(self.header["packet_id"])

    @property
    def model_hash(self) -> str:  # noqa: D102
        return str(self.header["model_hash"])

    def to_json(self) -> dict[str, Any]:
        """One entry of a pool transaction's ``data.pool`` list."""
        return {**self.header, "signature": self.signature, "metrics": {k: dict(v) for k, v in self.metrics.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> PooledPackage:
        """Parse :meth:`to_json`'s form; ``ValueError`` says what is malformed."""
        if not isinstance(obj, dict) or set(obj) != {*HEADER_FIELDS, "signature", "metrics"}:
            raise ValueError(f"a pooled package must have exactly {sorted({*HEADER_FIELDS, 'signature', 'metrics'})}")
        for name in ("packet_id", "model_hash", "client_id", "public_key", "metrics_hash", "signature"):
            if not isinstance(obj[name], str) or not obj[name] or len(obj[name]) > 256:
                raise ValueError(f"pooled package {name} must be a string of 1 to 256 characters")
        for name in ("server_round", "num_examples"):
            if isinstance(obj[name], bool) or not isinstance(obj[name], int):
                raise ValueError(f"pooled package {name} must be an integer")
        if isinstance(obj["timestamp"], bool) or not isinstance(obj["timestamp"], (int, float)) \
                or not math.isfinite(obj["timestamp"]):
            raise ValueError("pooled package timestamp must be a finite number")
        metrics = obj["metrics"]
        if not isinstance(metrics, dict) or not all(
                isinstance(r, dict) and all(isinstance(k, str) and _finite_numbers(v) for k, v in r.items())
                for r in metrics.values()):
            raise ValueError("pooled package metrics must be {record: {name: finite number or list}}")
        header = {k: obj[k] for k in HEADER_FIELDS}
        header["timestamp"] = float(header["timestamp"])
        return cls(header, obj["signature"], metrics)

    def supersedes(self, known: PooledPackage | None) -> bool:
        """Whether this package replaces ``known``, its client's pooled one: it is newer (or there is none)."""
        return known is None or self.header["timestamp"] > known.header["timestamp"]

    def problem(self, enrolled_key: str | None) -> str | None:
        """Why this package may not enter the pool of a client enrolled under ``enrolled_key``, or None."""
        if enrolled_key is None:
            return f"{self.client_id!r} is not an enrolled client"
        if self.header["public_key"] != enrolled_key:
            return f"package of {self.client_id!r} names a key other than its enrolled one"
        try:
            signature = bytes.fromhex(self.signature)
        except ValueError:
            return f"package of {self.client_id!r}: signature is not hex"
        if not verify_signature(enrolled_key, signature, package_digest(self.header)):
            return f"package of {self.client_id!r}: signature does not verify under its enrolled key"
        if metrics_digest(self.metrics) != self.header["metrics_hash"]:
            return f"package of {self.client_id!r}: metrics do not match the signed package"
        return None
