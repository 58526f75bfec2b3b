"""Block and transaction records: field names, hashing, signing, JSON round trips."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcsfl_flower.crypto import SigningKey, verify_signature
from bcsfl_flower.ledger import (
    GENESIS,
    Block,
    LedgerError,
    Transaction,
    build_block,
    canonical_json,
    make_transaction,
)
from bcsfl_flower.ledger.rules import check_block


def _paper_canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("utf-8")


def test_genesis_is_the_standard_block() -> None:
    assert GENESIS.to_json() == {
        "hash": "genesis-hash",
        "lastHash": "",
        "timestamp": 0.0,
        "data": {"genesis": True, "chain": "bcsfl"},
        "public": "",
        "sign": "",
        "sequenceNo": 0,
    }


def test_canonical_json_matches_the_paper_encoding() -> None:
    obj = {"b": [1, 2.5, None], "a": "é", "c": {"z": True, "y": False}}
    assert canonical_json(obj) == _paper_canonical(obj)
    assert b" " not in canonical_json(obj)
    with pytest.raises(LedgerError):
        canonical_json({"x": float("nan")})


def test_transaction_hash_and_signature(clients: list[SigningKey]) -> None:
    key = clients[0]
    data = {"model-params": "ab" * 32, "model-acc": None, "num": 7}
    tx = make_transaction(key, data, timestamp=12.5, tx_id="tx-1")
    body = {"id": "tx-1", "public": key.public_hex, "data": data, "timestamp": 12.5}
    assert tx.hash == hashlib.sha256(_paper_canonical(body)).hexdigest()
    assert verify_signature(key.public_hex, bytes.fromhex(tx.sign), bytes.fromhex(tx.hash))
    assert set(tx.to_json()) == {"id", "public", "data", "timestamp", "hash", "sign"}
    assert Transaction.from_json(json.loads(json.dumps(tx.to_json()))) == tx


def test_uuid_transaction_ids_are_fresh(clients: list[SigningKey]) -> None:
    a = make_transaction(clients[0], {"num": 1})
    b = make_transaction(clients[0], {"num": 1})
    assert a.id != b.id and len(a.id) == 36


def test_block_hash_signature_and_names(producer: SigningKey) -> None:
    data = {"round": 1, "accepted": [], "rejected": []}
    block = build_block(GENESIS, data, producer, timestamp=100.0)
    body = {
        "sequenceNo": 1,
        "timestamp": 100.0,
        "lastHash": "genesis-hash",
        "data": data,
        "public": producer.public_hex,
    }
    assert block.hash == hashlib.sha256(_paper_canonical(body)).hexdigest()
    assert verify_signature(
        producer.public_hex, bytes.fromhex(block.sign), bytes.fromhex(block.hash)
    )
    as_json = block.to_json()
    assert set(as_json) == {
        "hash", "lastHash", "timestamp", "data", "public", "sign", "sequenceNo"
    }
    assert as_json["sequenceNo"] == block.sequenceNo == 1
    assert as_json["lastHash"] == block.lastHash == "genesis-hash"
    assert Block.from_json(json.loads(json.dumps(as_json))) == block


def test_build_block_default_timestamp_never_goes_back(producer: SigningKey) -> None:
    future = build_block(GENESIS, {}, producer, timestamp=4_000_000_000.0)
    nxt = build_block(future, {}, producer)
    assert nxt.timestamp == future.timestamp


def test_from_json_rejects_malformed_blocks(producer: SigningKey) -> None:
    good = build_block(GENESIS, {}, producer).to_json()
    for broken in (
        {k: v for k, v in good.items() if k != "sign"},
        {**good, "extra": 1},
        {**good, "sequenceNo": "1"},
        {**good, "sequenceNo": True},
        {**good, "data": []},
        {**good, "timestamp": "now"},
    ):
        with pytest.raises(LedgerError):
            Block.from_json(broken)


_json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(
    max_size=8
) | st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _json, max_size=4))
def test_arbitrary_json_data_round_trips_and_is_well_formed(payload: dict[str, Any]) -> None:
    """Any JSON data makes a well-formed signed block (what it means is for the rules)."""
    payload.pop("transactions", None)
    payload.pop("model-params", None)
    key = SigningKey.from_seed(b"hypothesis-producer")
    block = build_block(GENESIS, payload, key)
    check_block(block)
    assert Block.from_json(json.loads(json.dumps(block.to_json()))) == block
    assert Block.from_row(block.to_row()) == block


@settings(max_examples=60, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _json, max_size=4),
       seq=st.integers(1, 2**53), ts=st.floats(0, 1e12), last=st.text(max_size=8), public=st.text(max_size=8))
def test_block_hash_is_the_paper_encoding_of_every_field(payload, seq, ts, last, public) -> None:
    """The spliced body (data encoded once) hashes exactly like the whole body encoded."""
    body = {"sequenceNo": seq, "timestamp": float(ts), "lastHash": last, "data": payload, "public": public}
    want = hashlib.sha256(_paper_canonical(body)).hexdigest()
    block = Block(seq, want, last, ts, payload, public, "")
    assert block.expected_hash() == want
    parsed = Block.from_json(json.loads(json.dumps(block.to_json())), copy=False)
    assert parsed.expected_hash() == want and parsed.to_row().data == _paper_canonical(payload).decode()


def test_parsed_block_with_a_number_json_cannot_encode_is_refused() -> None:
    obj = json.loads('{"hash":"h","lastHash":"l","timestamp":1,"data":{"x":1e999},"public":"p",'
                     '"sign":"s","sequenceNo":1}')
    with pytest.raises(LedgerError, match="canonical"):
        Block.from_json(obj, copy=False)


@settings(max_examples=80, deadline=None)
@given(data=st.dictionaries(st.text(max_size=6), _json, max_size=4), tx_id=st.text(max_size=12),
       public=st.text(max_size=8), ts=st.floats(-1e300, 1e300) | st.integers(-2**60, 2**60))
def test_transaction_hash_is_the_paper_encoding_of_its_fields(data, tx_id, public, ts) -> None:
    from bcsfl_flower.ledger.block import transaction_hash

    body = {"id": tx_id, "public": public, "data": data, "timestamp": float(ts)}
    assert transaction_hash(tx_id, public, data, ts) == hashlib.sha256(_paper_canonical(body)).hexdigest()


def test_block_op_is_the_plain_json_of_the_block(producer: SigningKey, clients: list[SigningKey]) -> None:
    """encode_block_op reuses the canonical data text; the bytes equal a plain encoding."""
    from bcsfl_flower.ledger.ops import _dumps, encode_block_op, parse_op

    block = build_block(GENESIS, {"note": "é\"", "transactions": [make_transaction(clients[0], {"num": 1})]},
                        producer)
    value = encode_block_op(block)
    assert value == _dumps({"op": "block", "block": block.to_json()})
    assert parse_op(value).block == block
