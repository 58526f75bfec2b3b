import numpy as np
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.package import ModelPackage, canonical_bytes, model_hash, parse_canonical_bytes


def test_canonical_bytes_round_trip_and_fixed_layout():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    blob = canonical_bytes(tensors)
    back = parse_canonical_bytes(blob)
    assert list(back) == ["a", "b"]
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])
    # Big-endian input encodes to the same bytes: the layout is little-endian always.
    swapped = {"a": tensors["a"].astype(">f4"), "b": tensors["b"]}
    assert canonical_bytes(swapped) == blob
    # Order, shape and dtype are part of the hash.
    assert model_hash({"b": tensors["b"], "a": tensors["a"]}) != model_hash(tensors)
    assert model_hash({"a": tensors["a"].reshape(3, 2), "b": tensors["b"]}) != model_hash(tensors)
    assert model_hash({"a": tensors["a"].astype(np.float64), "b": tensors["b"]}) != model_hash(tensors)


@pytest.mark.parametrize("blob", [b"", b"garbage!", canonical_bytes({"a": np.ones(3, np.float32)})[:-2]])
def test_malformed_canonical_bytes_raise(blob):
    with pytest.raises(ValueError):
        parse_canonical_bytes(blob)


def test_package_signature_binds_every_header_field():
    key = SigningKey.from_seed(b"client")
    pkg = ModelPackage.create(key, {"a": np.ones(2, np.float32)}, client_id="c1", server_round=3,
                              num_examples=10, metrics={"m": {"loss": 1.0}})
    assert pkg.signature_valid(key.public_hex)
    assert not pkg.signature_valid(SigningKey.from_seed(b"other").public_hex)
    for field, value in [("server_round", 4), ("num_examples", 11), ("client_id", "c2"),
                         ("timestamp", pkg.timestamp + 1), ("packet_id", "x"), ("metrics_hash", "0" * 64)]:
        forged = ModelPackage(**{**pkg.__dict__, field: value})
        assert not forged.signature_valid(key.public_hex), field
    assert ModelPackage.from_record(pkg.to_record()) == pkg
