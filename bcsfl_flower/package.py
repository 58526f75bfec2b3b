"""The BCS-FL model package: canonical parameter bytes, their hash, and a signature.

A client's reply carries its parameters in an ``ArrayRecord`` (as with any Flower
strategy) plus one ``ConfigRecord`` under :data:`PACKAGE_KEY` holding the package
header: packet id, model hash, timestamp, client id, public key, round, example count
and an Ed25519 signature. The signature covers the *package digest*, which binds the
model hash to everything else in the header, so a replayed or re-labelled package
fails verification just like a forged one. :data:`PACKAGE_KEY` is the protocol's
(:mod:`.protocol`), re-exported here.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from .crypto import SigningKey, sha256_hex, verify_signature
from .federation import PooledPackage, metrics_digest, package_digest
from .protocol import PACKAGE_KEY

__all__ = [
    "PACKAGE_KEY",
    "ModelPackage",
    "arrays_to_numpy",
    "metrics_hash",
    "canonical_bytes",
    "canonical_size",
    "model_hash",
    "numpy_to_arrays",
    "parse_canonical_bytes",
    "reply_client_id",
]

_MAGIC = b"BCSFLv1\0"


def reply_client_id(message: Message) -> str | None:
    """The client id a train reply's package header names, unverified (None: an error reply,
    no package, or a package without one)."""
    if message.has_error():
        return None
    header = message.content.config_records.get(PACKAGE_KEY)
    return str(header["client-id"]) if header is not None and "client-id" in header else None


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Return the record's arrays as numpy, in the record's own (insertion) order."""
    return {name: arr.numpy() for name, arr in arrays.items()}


def numpy_to_arrays(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Build an ArrayRecord from named numpy arrays, keeping their order."""
    return ArrayRecord({name: Array(np.ascontiguousarray(t)) for name, t in tensors.items()})


def canonical_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Serialise named tensors to bytes that are identical wherever they are computed.

    Layout: magic, tensor count, then per tensor its UTF-8 name, dtype (numpy
    little-endian string such as ``<f4``), shape, and its C-order little-endian data,
    each length-prefixed. The order is the mapping's order, which the global model
    fixes (Flower keeps ``state_dict`` order).
    """
    parts = [_MAGIC, struct.pack("<I", len(tensors))]
    for name, tensor in tensors.items():
        arr = np.ascontiguousarray(tensor)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        name_b = name.encode()
        dtype_b = arr.dtype.str.encode()
        parts.append(struct.pack("<I", len(name_b)) + name_b)
        parts.append(struct.pack("<I", len(dtype_b)) + dtype_b)
        parts.append(struct.pack("<I", arr.ndim) + struct.pack(f"<{arr.ndim}Q", *arr.shape))
        data = arr.tobytes(order="C")
        parts.append(struct.pack("<Q", len(data)) + data)
    return b"".join(parts)


def canonical_size(tensors: Mapping[str, np.ndarray]) -> int:
    """Length of :func:`canonical_bytes` of ``tensors``, computed without encoding them."""
    size = len(_MAGIC) + 4
    for name, tensor in tensors.items():
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        ndim = max(tensor.ndim, 1)  # as np.ascontiguousarray in canonical_bytes makes scalars 1-d
        size += 4 + len(name.encode()) + 4 + len(dtype.str.encode()) + 4 + 8 * ndim + 8 + tensor.nbytes
    return size


def parse_canonical_bytes(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`canonical_bytes`; raises ``ValueError`` on malformed input."""
    view = memoryview(blob)
    if bytes(view[:8]) != _MAGIC:
        raise ValueError("not BCS-FL canonical model bytes")
    pos = 8

    def take(size: int) -> memoryview:
        nonlocal pos
        if pos + size > len(view):
            raise ValueError("truncated model bytes")
        chunk = view[pos : pos + size]
        pos += size
        return chunk

    (count,) = struct.unpack("<I", take(4))
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        (n,) = struct.unpack("<I", take(4))
        name = bytes(take(n)).decode()
        (n,) = struct.unpack("<I", take(4))
        dtype = np.dtype(bytes(take(n)).decode())
        (ndim,) = struct.unpack("<I", take(4))
        shape = struct.unpack(f"<{ndim}Q", take(8 * ndim))
        (n,) = struct.unpack("<Q", take(8))
        out[name] = np.frombuffer(bytes(take(n)), dtype=dtype).reshape(shape)
    if pos != len(view):
        raise ValueError("trailing bytes after the last tensor")
    return out


def metrics_hash(metrics: Mapping[str, object]) -> str:
    """SHA-256 (hex) of metrics as canonical JSON (sorted keys, floats via repr)."""
    return metrics_digest(metrics)


def model_hash(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the canonical bytes of ``tensors``."""
    return sha256_hex(canonical_bytes(tensors))


@dataclass(frozen=True)
class ModelPackage:
    """Header of a signed model package (the parameters travel beside it).

    Parameters
    ----------
    packet_id : str
        Random UUID; a coordinator accepts each packet id once.
    model_hash : str
        SHA-256 hex of the canonical bytes of the uploaded parameters.
    timestamp : float
        Unix time at which the client signed the package.
    client_id : str
        Identity under which the client's public key is registered on the ledger.
    public_key : str
        The client's Ed25519 public key (hex).
    server_round : int
        Round this update answers; binds the package to one round.
    num_examples : int
        Training examples behind the update (the aggregation weight).
    metrics_hash : str
        SHA-256 hex of the reply's metrics (see :func:`metrics_hash`), so reported
        losses and privacy budgets are signed too.
    signature : bytes
        Ed25519 signature over :meth:`digest`.
    """

    packet_id: str
    model_hash: str
    timestamp: float
    client_id: str
    public_key: str
    server_round: int
    num_examples: int
    metrics_hash: str = ""
    signature: bytes = b""

    def digest(self) -> bytes:
        """Bytes that the signature covers: every header field but the signature."""
        return package_digest(self.__dict__)

    @classmethod
    def create(
        cls,
        key: SigningKey,
        tensors: Mapping[str, np.ndarray],
        *,
        client_id: str,
        server_round: int,
        num_examples: int,
        metrics: Mapping[str, object] | None = None,
        timestamp: float | None = None,
    ) -> ModelPackage:
        """Hash ``tensors`` and sign a fresh package for them with ``key``."""
        unsigned = cls(
            packet_id=str(uuid.uuid4()),
            model_hash=model_hash(tensors),
            timestamp=time.time() if timestamp is None else timestamp,
            client_id=client_id,
            public_key=key.public_hex,
            server_round=server_round,
            num_examples=num_examples,
            metrics_hash=metrics_hash(metrics or {}),
        )
        return unsigned.with_signature(key.sign(unsigned.digest()))

    def with_signature(self, signature: bytes) -> ModelPackage:
        """A copy carrying ``signature``."""
        return ModelPackage(**{**self.__dict__, "signature": signature})

    def signature_valid(self, public_key: str) -> bool:
        """True when the signature verifies under ``public_key``."""
        return verify_signature(public_key, self.signature, self.digest())

    def pooled(self, metrics: Mapping[str, Mapping[str, object]]) -> PooledPackage:
        """This package as the chain pools it, with the metrics it signed (see :mod:`bcsfl_flower.federation.pool`)."""
        header = {k: v for k, v in self.__dict__.items() if k != "signature"}
        header["timestamp"] = float(header["timestamp"])
        return PooledPackage(header, self.signature.hex(), {n: dict(r) for n, r in metrics.items()})

    @classmethod
    def from_pooled(cls, pooled: PooledPackage) -> ModelPackage:
        """The package a pooled header describes (its signature was checked when it was pooled)."""
        return cls(**pooled.header, signature=bytes.fromhex(pooled.signature))

    def to_record(self) -> ConfigRecord:
        """Encode as the ConfigRecord stored under :data:`PACKAGE_KEY`."""
        return ConfigRecord(
            {
                "packet-id": self.packet_id,
                "model-hash": self.model_hash,
                "timestamp": float(self.timestamp),
                "client-id": self.client_id,
                "public-key": self.public_key,
                "server-round": int(self.server_round),
                "num-examples": int(self.num_examples),
                "metrics-hash": self.metrics_hash,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ModelPackage:
        """Decode a package header; raises ``ValueError`` naming a missing/bad field."""
        fields = {
            "packet-id": str,
            "model-hash": str,
            "timestamp": float,
            "client-id": str,
            "public-key": str,
            "server-round": int,
            "num-examples": int,
            "metrics-hash": str,
            "signature": bytes,
        }
        values = {}
        for name, kind in fields.items():
            if name not in record:
                raise ValueError(f"package field '{name}' missing")
            value = record[name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"package field '{name}' is not {kind.__name__}")
            values[name.replace("-", "_")] = value
        return cls(**values)
