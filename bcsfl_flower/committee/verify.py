"""Verification of model packages before they count (BCS-FL, Sec. IV-B: the coordinators' checks).

Two places check packages, cheap checks first in both:

* :class:`PackageVerifier` checks a reply as the relay receives it (structure,
  registration, round, timestamp window, replay, signature, metrics, sizes and shapes
  from the arrays' metadata, finiteness, and the hash of the canonical bytes, computed
  once and carried on). What passes is pooled on the chain; what fails is refused
  there and then, with its reason in the round's record (an unauthenticated reply
  never reaches the chain).
* :func:`verify_pool` is the committee's check of the round's pool as the chain holds
  it (signatures were checked when each package was pooled): round, timestamp,
  examples, then the parameters from the model store (size before decoding, shapes,
  finiteness). A failing pooled package becomes a :class:`Rejection` that goes onto
  the ledger with its packet id.

Both decode a top-k upload (:mod:`bcsfl_flower.compression`) onto the global model
they check against (the certified one), refusing a malformed encoding with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from ..crypto import sha256_hex
from ..federation import PooledPackage
from ..package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, canonical_bytes, canonical_size, metrics_hash
from ..package import parse_canonical_bytes
from ..compression import decode_record, decode_stored, is_compressed, is_stored_compressed

__all__ = ["PackageVerifier", "Rejection", "VerifiedUpdate", "StoreReader", "verify_pool", "verify_round"]


@dataclass(frozen=True)
class VerifiedUpdate:
    """A package that passed every check, with its parameters.

    ``blob`` is the parameters' canonical bytes (hashing to ``package.model_hash``) and
    ``pooled`` the package as the chain pools it, when the relay verified a reply;
    both are left empty by the committee's check of the pool.
    """

    package: ModelPackage
    tensors: dict[str, np.ndarray]
    metrics: dict[str, float]
    blob: bytes = b""
    pooled: PooledPackage | None = None

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
        if is_compressed(content.array_records[self.arrayrecord_key]):  # a top-k upload: decoded onto the reference
            return self._verify_compressed(package, content, reference)
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
        # Encode and hash once, in the reference's order (the canonical order is the global model's).
        ordered = {name: tensors[name] for name in reference}
        blob = canonical_bytes(ordered)
        if sha256_hex(blob) != package.model_hash:
            return Rejection(cid, "hash does not match parameters", pid)
        self.seen_packets.add(pid)
        nested = {n: dict(r) for n, r in content.metric_records.items()}
        return VerifiedUpdate(package=package, tensors=ordered, metrics=_flat(nested), blob=blob,
                              pooled=package.pooled(nested))


    def _verify_compressed(self, package: ModelPackage, content: RecordDict, reference: Mapping[str, np.ndarray]
                           ) -> VerifiedUpdate | Rejection:
        """A top-k encoding (:mod:`bcsfl_flower.compression`): size, signed hash, then the decode."""
        try:
            tensors, blob = decode_record(content.array_records[self.arrayrecord_key], reference, package.model_hash)
        except ValueError as err:
            return Rejection(package.client_id, f"bad compressed update: {err}", package.packet_id)
        self.seen_packets.add(package.packet_id)
        nested = {n: dict(r) for n, r in content.metric_records.items()}
        return VerifiedUpdate(package=package, tensors=tensors, metrics=_flat(nested), blob=blob,
                              pooled=package.pooled(nested))


def _flat(metrics: Mapping[str, Mapping[str, object]]) -> dict[str, float]:
    return {k: float(v) for record in metrics.values() for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


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


class StoreReader:
    """Reads parameters by model hash from a content-addressed store (call it with a digest).

    ``get_bytes`` is the store's read (``Ledger.get_model``: it checks the bytes hash to
    the key). Bytes of another size than the reference's canonical encoding are refused
    unread (``ValueError``); ``known`` holds tensors already verified under their hash
    (the relay's own admissions), which need no second read. ``bytes_read`` counts what
    was read from the store (the committee's share of the round's traffic).
    """

    def __init__(self, get_bytes: Callable[[str], bytes], reference: Mapping[str, np.ndarray],
                 known: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        self.get_bytes, self.known, self.bytes_read = get_bytes, dict(known or {}), 0
        self.size = canonical_size(reference)
        self.reference = reference  # a top-k upload decodes onto it (the certified global model)

    def __call__(self, digest: str) -> dict[str, np.ndarray]:
        if digest in self.known:
            return dict(self.known[digest])
        blob = self.get_bytes(digest)
        self.bytes_read += len(blob)
        if is_stored_compressed(blob):  # bounded by the dense size before it is parsed
            return decode_stored(blob, self.reference)
        if len(blob) != self.size:
            raise ValueError(f"{len(blob)} bytes where the model's encoding has {self.size} (refused unread)")
        return parse_canonical_bytes(blob)


def verify_pool(
    pool: Mapping[str, PooledPackage],
    read: Callable[[str], dict[str, np.ndarray]],
    *,
    server_round: int,
    reference: Mapping[str, np.ndarray],
    now: float,
    max_age: float = 600.0,
    max_skew: float = 30.0,
) -> tuple[list[VerifiedUpdate], list[Rejection]]:
    """The committee's check of the round's pool, by client id; what fails is refused on the chain.

    Parameters
    ----------
    pool : Mapping[str, PooledPackage]
        The pool of the chain state the round follows (:attr:`FederationState.pool`).
    read : Callable[[str], dict[str, np.ndarray]]
        Parameters by model hash (:class:`StoreReader`); ``KeyError`` if absent,
        ``ValueError`` (or ``LedgerError``) if unusable.
    server_round, reference, now
        Flower's round, the global model, the current time.
    max_age, max_skew : float (default: 600.0, 30.0)
        Timestamp window, as :class:`PackageVerifier`'s.
    """
    updates: list[VerifiedUpdate] = []
    refused: list[Rejection] = []
    for cid in sorted(pool):
        package = ModelPackage.from_pooled(pool[cid])
        pid = package.packet_id
        problem = ""
        if package.server_round != server_round:
            problem = f"package for round {package.server_round}, expected {server_round}"
        elif package.timestamp < now - max_age:
            problem = f"stale timestamp (older than {max_age:g}s)"
        elif package.timestamp > now + max_skew:
            problem = "timestamp in the future"
        elif package.num_examples <= 0:
            problem = "non-positive num-examples"
        if problem:
            refused.append(Rejection(cid, problem, pid))
            continue
        try:
            tensors = read(package.model_hash)
        except KeyError:
            refused.append(Rejection(cid, "parameters not in the model store", pid))
            continue
        except Exception as err:  # noqa: BLE001 - unreadable parameters are a refusal, whatever the cause
            refused.append(Rejection(cid, f"unreadable parameters: {err}", pid))
            continue
        problem = _shape_problem(tensors, reference)
        if not problem and not all(np.isfinite(t).all() for t in tensors.values()):
            problem = "non-finite values (NaN/Inf)"
        if problem:
            refused.append(Rejection(cid, problem, pid))
            continue
        ordered = {name: tensors[name] for name in reference}
        updates.append(VerifiedUpdate(package=package, tensors=ordered, metrics=_flat(pool[cid].metrics)))
    return updates, refused
