"""Verification of model packages before they count (BCS-FL, Sec. IV-B: the coordinators' checks).

Every check a coordinator runs on a reply, in the order that makes the cheap ones
first: structure, registration, round, timestamp window, replay, signature, shapes,
finiteness, and finally the hash of the canonical parameter bytes. A failing package
becomes a :class:`Rejection` with a reason string that goes onto the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from ..package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, metrics_hash, model_hash

__all__ = ["PackageVerifier", "Rejection", "VerifiedUpdate", "verify_round"]


@dataclass(frozen=True)
class VerifiedUpdate:
    """A package that passed every check, with its parameters."""

    package: ModelPackage
    tensors: dict[str, np.ndarray]
    metrics: dict[str, float]

    @property
    def client_id(self) -> str:  # noqa: D102
        return self.package.client_id


@dataclass(frozen=True)
class Rejection:
    """A reply that did not count, and why."""

    client_id: str
    reason: str
    packet_id: str = ""


@dataclass
class PackageVerifier:
    """Checks packages against the identity registry, the clock and the global model.

    Parameters
    ----------
    registry : Callable[[str], str | None]
        Returns the enrolled public key (hex) of a client id, or None (read off the
        certified chain state: :func:`~.outcome.client_key`).
    max_age : float (default: 600.0)
        Oldest acceptable package, in seconds before ``now``.
    max_skew : float (default: 30.0)
        How far in the future a timestamp may lie (clock skew allowance).
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord holding the parameters in a reply.
    """

    registry: Callable[[str], str | None]
    max_age: float = 600.0
    max_skew: float = 30.0
    arrayrecord_key: str = "arrays"
    seen_packets: set[str] = field(default_factory=set)

    def verify(
        self,
        content: RecordDict,
        *,
        server_round: int,
        reference: Mapping[str, np.ndarray],
        now: float,
        fallback_id: str = "?",
    ) -> VerifiedUpdate | Rejection:
        """Check one reply; the packet id is remembered only when everything passes."""
        if PACKAGE_KEY not in content.config_records:
            return Rejection(fallback_id, "unsigned: no model package in reply")
        try:
            package = ModelPackage.from_record(content.config_records[PACKAGE_KEY])
        except ValueError as err:
            return Rejection(fallback_id, f"malformed package: {err}")
        cid, pid = package.client_id, package.packet_id
        registered = self.registry(cid)
        if registered is None:
            return Rejection(cid, "unregistered client", pid)
        if package.public_key != registered:
            return Rejection(cid, "public key differs from the registered one", pid)
        if package.server_round != server_round:
            return Rejection(cid, f"package for round {package.server_round}, expected {server_round}", pid)
        if not np.isfinite(package.timestamp) or package.timestamp < now - self.max_age:
            # No age in the reason: every coordinator must record the same words.
            return Rejection(cid, f"stale timestamp (older than {self.max_age:g}s)", pid)
        if package.timestamp > now + self.max_skew:
            return Rejection(cid, "timestamp in the future", pid)
        if pid in self.seen_packets:
            return Rejection(cid, "replayed packet id", pid)
        if not package.signature_valid(registered):
            return Rejection(cid, "bad signature", pid)
        if metrics_hash({n: dict(r) for n, r in content.metric_records.items()}) != package.metrics_hash:
            return Rejection(cid, "metrics do not match the signed package", pid)
        if package.num_examples <= 0:
            return Rejection(cid, "non-positive num-examples", pid)
        if self.arrayrecord_key not in content.array_records:
            return Rejection(cid, f"no ArrayRecord '{self.arrayrecord_key}'", pid)
        problem = _header_problem(content.array_records[self.arrayrecord_key], reference)
        if problem:  # refused unread: nothing of an oversized or misshapen package is decoded
            return Rejection(cid, problem, pid)
        try:
            tensors = arrays_to_numpy(content.array_records[self.arrayrecord_key])
        except Exception as err:  # noqa: BLE001 - any decoding failure is a rejection
            return Rejection(cid, f"undecodable arrays: {err}", pid)
        problem = _shape_problem(tensors, reference)
        if problem:
            return Rejection(cid, problem, pid)
        if not all(np.isfinite(t).all() for t in tensors.values()):
            return Rejection(cid, "non-finite values (NaN/Inf)", pid)
        # Hash in the reference's order: the canonical order is the global model's.
        ordered = {name: tensors[name] for name in reference}
        if model_hash(ordered) != package.model_hash:
            return Rejection(cid, "hash does not match parameters", pid)
        self.seen_packets.add(pid)
        metrics = {
            k: float(v)
            for record in content.metric_records.values()
            for k, v in record.items()
            if isinstance(v, (int, float))
        }
        return VerifiedUpdate(package=package, tensors=ordered, metrics=metrics)


#: Room for the .npy header Flower's numpy Array carries before the raw bytes.
_NPY_HEADER_ROOM = 1024


def _header_problem(record: ArrayRecord, reference: Mapping[str, np.ndarray]) -> str:
    """Names, shapes, dtypes and byte sizes from the arrays' metadata, before any is decoded."""
    if set(record.keys()) != set(reference):
        missing = sorted(set(reference) - set(record.keys()))
        extra = sorted(set(record.keys()) - set(reference))
        return f"wrong tensors: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, ref in reference.items():
        array = record[name]
        if tuple(array.shape) != ref.shape:
            return f"wrong shape for {name}: {tuple(array.shape)} != {ref.shape}"
        if array.dtype != str(ref.dtype):
            return f"wrong dtype for {name}: {array.dtype} != {ref.dtype}"
        if len(array.data) > ref.nbytes + _NPY_HEADER_ROOM:
            return f"oversized {name}: {len(array.data)} bytes for a {ref.nbytes}-byte tensor (refused unread)"
    return ""


def _shape_problem(tensors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> str:
    if set(tensors) != set(reference):
        missing = sorted(set(reference) - set(tensors))
        extra = sorted(set(tensors) - set(reference))
        return f"wrong tensors: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, ref in reference.items():
        t = tensors[name]
        if t.shape != ref.shape:
            return f"wrong shape for {name}: {t.shape} != {ref.shape}"
        if t.dtype != ref.dtype:
            return f"wrong dtype for {name}: {t.dtype} != {ref.dtype}"
    return ""


def verify_round(
    verifier: PackageVerifier,
    contents: list[tuple[str, RecordDict]],
    *,
    server_round: int,
    reference: Mapping[str, np.ndarray],
    now: float,
) -> tuple[list[VerifiedUpdate], list[Rejection]]:
    """Verify a round's replies (``(fallback id, content)`` pairs); one package per client counts."""
    updates: list[VerifiedUpdate] = []
    rejections: list[Rejection] = []
    for fallback, content in contents:
        out = verifier.verify(content, server_round=server_round, reference=reference, now=now, fallback_id=fallback)
        if isinstance(out, VerifiedUpdate) and any(u.client_id == out.client_id for u in updates):
            out = Rejection(out.client_id, "second package from the same client this round", out.package.packet_id)
        (updates if isinstance(out, VerifiedUpdate) else rejections).append(out)
    return updates, rejections
