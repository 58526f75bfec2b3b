"""Upload compression with error feedback: top-k sparsification of the update, 8-bit or ternary values optional.

A client keeps the ``k`` largest-magnitude entries of its update (local model minus the
certified global model it received) plus the *residual* of earlier rounds, and carries
what it did not send to the next round (Lin et al., "Deep Gradient Compression", ICLR
2018; Sattler et al., "Robust and Communication-Efficient Federated Learning from
Non-IID Data" (Sparse Ternary Compression), IEEE TNNLS 2019). Unsent mass is delayed,
not lost, which is why a 1% upload still trains.

The upload is one compact encoding, the bytes the client signs (the package's model
hash covers them) and the relay pools in the model store. Layout, little-endian::

    magic "BCSFLtk1" | bits u8 (0: float32 values, 8: int8 codes, 2: ternary codes) |
    n u64 (values in the model) | k u32 | scale f32 | k index gaps u16, each at least 1 |
    k values (f32; i8 times scale; or 2-bit codes 0, +scale, -scale, four to a byte)

Entry ``i`` sits at ``gap_0 + ... + gap_i - 1``: gaps of at least 1 make the indices
strictly increasing, so no index repeats, and cost 2 bytes instead of 4. A gap over
65535 is bridged by zero-valued entries (none for a model under 65536 values).

It travels as the reply's one ArrayRecord entry :data:`COMPRESSED_KEY` (a uint8 array),
so Flower, the signature and the ledger store handle it like any parameters. The
coordinators decode it against the same global model into dense parameters
(``reference + delta``) before verification and filtering; a malformed encoding
(wrong length or count, an index out of range or repeated, NaN/Inf, a bad scale or
code) raises ``ValueError`` with the reason, and the round goes on without it.
Magnitude pruning of the model (:mod:`bcsfl_flower.training.pruning`) stays as an
option, but compressing the update is what saves upload bytes at little accuracy cost.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from .crypto import sha256_hex
from .package import canonical_bytes, canonical_size

__all__ = [
    "COMPRESSED_KEY",
    "COMPRESSIONS",
    "apply_delta",
    "compress",
    "decode",
    "decode_record",
    "decode_stored",
    "encode",
    "encoded_size",
    "is_compressed",
    "is_stored_compressed",
    "payload_bytes",
    "to_record",
]

#: Name of the one ArrayRecord entry of a compressed reply.
COMPRESSED_KEY = "bcsfl.topk"
COMPRESSIONS = ("none", "topk")
_MAGIC = b"BCSFLtk1"
_HEAD = struct.Struct("<8sBQIf")  # magic, bits, n, k, scale
_WIDTHS = (0, 2, 8)
_MAX_GAP = 65535  # u16
_NPY_HEADER_ROOM = 1024  # the .npy header Flower's Array carries before the raw bytes


def _value_bytes(k: int, bits: int) -> int:
    return 4 * k if bits == 0 else k if bits == 8 else (k + 3) // 4


def encoded_size(k: int, bits: int = 0) -> int:
    """Bytes of an encoding with ``k`` entries, bridges included (``bits``: see :func:`compress`)."""
    return _HEAD.size + 2 * k + _value_bytes(k, bits)


def _pack_ternary(codes: np.ndarray) -> bytes:
    """-1/0/+1 as 2-bit codes 2/0/1, four to a byte, the first in the low bits; zero padding."""
    c = np.where(codes < 0, 2, codes).astype(np.uint8)
    c = np.concatenate([c, np.zeros(-len(c) % 4, np.uint8)]).reshape(-1, 4)
    return (c[:, 0] | c[:, 1] << 2 | c[:, 2] << 4 | c[:, 3] << 6).astype(np.uint8).tobytes()


def _unpack_ternary(raw: np.ndarray, k: int) -> np.ndarray:
    codes = np.stack([(raw >> s) & 3 for s in (0, 2, 4, 6)], axis=1).ravel()
    if (codes == 3).any():
        raise ValueError("ternary code 3 is not a value")
    if codes[k:].any():
        raise ValueError("nonzero padding after the last ternary code")
    return np.array([0.0, 1.0, -1.0], np.float32)[codes[:k]]


def _bridged(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``indices`` with zero-valued entries added wherever two lie more than 65535 apart."""
    gaps = np.diff(np.concatenate([[-1], indices]))
    wide = np.flatnonzero(gaps > _MAX_GAP)
    if not len(wide):
        return indices, values
    extra = np.concatenate([np.arange((indices[i - 1] if i else -1) + _MAX_GAP, indices[i], _MAX_GAP) for i in wide])
    order = np.argsort(np.concatenate([indices, extra]), kind="stable")
    filler = np.zeros(len(extra), values.dtype)
    return np.concatenate([indices, extra])[order], np.concatenate([values, filler])[order]


def encode(n: int, indices: np.ndarray, values: np.ndarray, *, bits: int = 0, scale: float = 1.0) -> bytes:
    """The compact encoding of a sparse update (see the module docstring).

    Parameters
    ----------
    n : int
        Values in the whole (flattened) model.
    indices : np.ndarray
        Positions of the kept entries, strictly increasing, each below ``n`` (stored as
        gaps; see the module docstring).
    values : np.ndarray
        float32 values (``bits`` 0), int8 codes (8) or -1/0/+1 (2), one per index.
    bits : int (default: 0)
        0: float32 values; 8 and 2: codes, each worth ``code * scale``.
    scale : float (default: 1.0)
        Value of one code step (ignored for float32).
    """
    if bits not in _WIDTHS:
        raise ValueError(f"bits must be one of {_WIDTHS}, not {bits}")
    dtype = "<f4" if bits == 0 else "i1"
    indices, values = _bridged(np.asarray(indices, np.int64), np.asarray(values, dtype))
    gaps = np.diff(np.concatenate([[-1], indices]))
    head = _HEAD.pack(_MAGIC, bits, n, len(indices), scale if bits else 1.0)
    body = _pack_ternary(values) if bits == 2 else values.astype(dtype).tobytes()
    return head + gaps.astype("<u2").tobytes() + body


def decode(blob: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, float32 values) of an encoding of an ``n``-value model; ``ValueError`` if malformed."""
    if len(blob) < _HEAD.size:
        raise ValueError(f"truncated encoding ({len(blob)} bytes)")
    magic, bits, count, k, scale = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a top-k encoding")
    if bits not in _WIDTHS:
        raise ValueError(f"unknown value width {bits} bits")
    if count != n:
        raise ValueError(f"encodes a model of {count} values, the global model has {n}")
    if k > n:
        raise ValueError(f"{k} entries for a model of {n} values")
    if len(blob) != encoded_size(k, bits):
        raise ValueError(f"{len(blob)} bytes where {k} entries take {encoded_size(k, bits)}")
    if bits and not (math.isfinite(scale) and scale > 0):
        raise ValueError("scale is not a positive finite number")
    gaps = np.frombuffer(blob, "<u2", k, _HEAD.size).astype(np.int64)
    width = {0: "<f4", 8: "i1", 2: "u1"}[bits]
    raw = np.frombuffer(blob, width, _value_bytes(k, bits) // np.dtype(width).itemsize, _HEAD.size + 2 * k)
    if k and not (gaps > 0).all():
        raise ValueError("a zero index gap (a repeated index)")
    indices = np.cumsum(gaps) - 1
    if k and int(indices[-1]) >= n:  # increasing, so the last is the largest
        raise ValueError(f"index {int(indices[-1])} out of range for {n} values")
    codes = _unpack_ternary(raw, k) if bits == 2 else raw.astype(np.float32)
    values = codes * np.float32(scale) if bits else codes
    if not np.isfinite(values).all():
        raise ValueError("non-finite values (NaN/Inf)")
    return indices, values


def compress(update: np.ndarray, residual: np.ndarray | None = None, *, fraction: float = 0.05,
             bits: int = 0) -> tuple[bytes, np.ndarray]:
    """Top-k of ``update + residual``; returns (encoding, the new residual).

    Parameters
    ----------
    update : np.ndarray
        This round's flat update (local model minus the received global model).
    residual : np.ndarray | None (default: None, i.e. zeros)
        What earlier rounds did not send (error feedback); same size as ``update``.
    fraction : float (default: 0.05)
        Share of entries kept, in (0, 1]; at least one entry is kept.
    bits : int (default: 0)
        0: kept values as float32; 8: int8 codes with one scale (max |value| / 127);
        2: ternary, the sign of each value times their mean magnitude (Sparse Ternary
        Compression), so an entry costs 2.25 bytes, not 3 (int8) or 6 (float32).

    The new residual is ``update + residual`` minus what the coordinators will decode
    (quantisation error included), so nothing is lost, only delayed.
    """
    acc = np.asarray(update, np.float32).ravel().copy()
    if residual is not None:
        if residual.size != acc.size:  # e.g. the model changed: start over
            residual = None
        else:
            acc += residual.astype(np.float32).ravel()
    n = acc.size
    k = min(n, max(1, math.ceil(fraction * n)))
    idx = np.sort(np.argpartition(np.abs(acc), n - k)[n - k:])
    kept = acc[idx]
    if bits == 8:
        peak = float(np.abs(kept).max()) if k else 0.0
        scale = peak / 127.0 if peak > 0 and math.isfinite(peak) else 1.0
        codes = np.clip(np.rint(kept / scale), -127, 127).astype(np.int8)
        sent = codes.astype(np.float32) * np.float32(scale)
        blob = encode(n, idx, codes, bits=8, scale=scale)
    elif bits == 2:
        mean = float(np.abs(kept).mean()) if k else 0.0
        scale = mean if mean > 0 and math.isfinite(mean) else 1.0
        codes = np.sign(kept).astype(np.int8)
        sent = codes.astype(np.float32) * np.float32(scale)
        blob = encode(n, idx, codes, bits=2, scale=scale)
    else:
        sent, blob = kept, encode(n, idx, kept)
    acc[idx] -= sent
    return blob, acc


def apply_delta(blob: bytes, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense parameters: ``reference`` plus the decoded delta, in the reference's order and dtypes."""
    if not all(np.issubdtype(t.dtype, np.floating) for t in reference.values()):
        raise ValueError("top-k updates need a model of floating-point tensors")
    n = sum(int(t.size) for t in reference.values())
    indices, values = decode(blob, n)
    delta = np.zeros(n, np.float32)
    delta[indices] = values
    out, offset = {}, 0
    for name, ref in reference.items():
        part = delta[offset : offset + ref.size].reshape(ref.shape)
        out[name] = (ref.astype(np.float32) + part).astype(ref.dtype)
        offset += ref.size
    return out


def to_record(blob: bytes) -> ArrayRecord:
    """The reply's ArrayRecord for an encoding (one uint8 array under :data:`COMPRESSED_KEY`)."""
    return ArrayRecord({COMPRESSED_KEY: Array(np.frombuffer(blob, np.uint8).copy())})


def is_compressed(record: ArrayRecord) -> bool:
    """True when a reply's ArrayRecord carries a top-k encoding rather than dense parameters."""
    return COMPRESSED_KEY in record.keys()


def payload_bytes(record: ArrayRecord) -> int:
    """Bytes of ``record`` as Flower serialises it into the message (its protobuf)."""
    from flwr.common.serde import array_record_to_proto

    return array_record_to_proto(record).ByteSize()


def _stored(blob: bytes) -> bytes:
    """What the package hashes and the ledger stores: the canonical bytes of the one uint8 tensor."""
    return canonical_bytes({COMPRESSED_KEY: np.frombuffer(blob, np.uint8)})


# Magic, count, name and dtype of the stored form: the same for every encoding.
_STORED_PREFIX = _stored(b"")[: 8 + 4 + 4 + len(COMPRESSED_KEY) + 4 + 3]


def decode_record(record: ArrayRecord, reference: Mapping[str, np.ndarray], model_hash: str
                  ) -> tuple[dict[str, np.ndarray], bytes]:
    """(dense parameters, stored bytes) of a compressed reply; ``ValueError`` with the reason.

    The size is checked from the array's metadata before anything is read (an encoding
    may not exceed the dense model's canonical size), then the signed hash, then the
    encoding itself (:func:`decode`).
    """
    if set(record.keys()) != {COMPRESSED_KEY}:
        raise ValueError(f"a compressed reply carries only '{COMPRESSED_KEY}'")
    array = record[COMPRESSED_KEY]
    limit = canonical_size(reference)
    if array.dtype != "uint8" or len(array.shape) != 1:
        raise ValueError("the encoding must be one uint8 vector")
    if len(array.data) > limit + _NPY_HEADER_ROOM:
        raise ValueError(f"{len(array.data)} bytes, more than the dense model's {limit} (refused unread)")
    try:
        blob = array.numpy().tobytes()
    except Exception as err:  # noqa: BLE001 - any decoding failure is a refusal
        raise ValueError(f"undecodable array: {err}") from None
    stored = _stored(blob)
    if len(stored) > limit:  # the bound the committee members apply to the stored bytes
        raise ValueError(f"{len(stored)} bytes, more than the dense model's {limit} (refused undecoded)")
    if sha256_hex(stored) != model_hash:
        raise ValueError("hash does not match parameters")
    return apply_delta(blob, reference), stored


def is_stored_compressed(stored: bytes) -> bool:
    """True when model-store bytes hold a top-k encoding (see :func:`decode_stored`)."""
    return stored.startswith(_STORED_PREFIX)


def decode_stored(stored: bytes, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense parameters from model-store bytes holding an encoding; ``ValueError`` if malformed."""
    from .package import parse_canonical_bytes

    if len(stored) > canonical_size(reference):
        raise ValueError(f"{len(stored)} bytes, more than the dense model's {canonical_size(reference)} "
                         "(refused undecoded)")
    tensors = parse_canonical_bytes(stored)
    if set(tensors) != {COMPRESSED_KEY} or tensors[COMPRESSED_KEY].dtype != np.uint8 \
            or tensors[COMPRESSED_KEY].ndim != 1:
        raise ValueError("not a top-k encoding")
    return apply_delta(tensors[COMPRESSED_KEY].tobytes(), reference)
