"""The fast paths of the hot loop give exactly what the general ones give.

``encode_block_data`` encodes a batch block and recomputes its transactions' hashes in
one pass; ``check_signature_hex`` answers a well-formed (key, signature, message) triple
it checked before from memory. Neither may ever accept what the general path refuses.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcsfl_flower import crypto
from bcsfl_flower.crypto import SigningKey, check_signature_hex, verify_cache_stats
from bcsfl_flower.ledger import GENESIS, LedgerError, build_block, canonical_json, make_transaction
from bcsfl_flower.ledger.block import Block, transaction_hash
from bcsfl_flower.ledger.canon import encode_block_data
from bcsfl_flower.ledger.rules import check_block, is_digest

_leaf = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=6) | st.floats(
    allow_nan=False, allow_infinity=False)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_tx = st.fixed_dictionaries({
    "id": st.text(max_size=10), "public": st.text(max_size=8), "hash": st.text(max_size=8),
    "sign": st.text(max_size=8), "data": st.dictionaries(st.text(max_size=5), _json, max_size=3),
    "timestamp": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60),
})


def _plain(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@settings(max_examples=120, deadline=None)
@given(txs=st.lists(_tx, max_size=4))
def test_batch_encoding_is_the_canonical_json_and_each_hash_the_transaction_hash(txs) -> None:
    data = {"transactions": txs}
    text, hashes = encode_block_data(data)
    assert text == _plain(data)
    if hashes is not None:
        assert list(hashes) == [transaction_hash(t["id"], t["public"], t["data"], t["timestamp"])
                                for t in txs]


@pytest.mark.parametrize("data", [
    {"transactions": [{"id": "a"}]},  # not the six fields
    {"transactions": [{"id": 1, "public": "p", "hash": "h", "sign": "s", "data": {}, "timestamp": 1.0}]},
    {"transactions": [{"id": "a", "public": "p", "hash": "h", "sign": "s", "data": [], "timestamp": 1.0}]},
    {"transactions": [{"id": "a", "public": "p", "hash": "h", "sign": "s", "data": {}, "timestamp": True}]},
    {"transactions": [{"id": "a", "public": "p", "hash": "h", "sign": "s", "data": {}, "timestamp": 10**400}]},
    {"transactions": [], "note": 1},
    {"charter": {"x": 1}},
])
def test_other_shapes_take_the_general_encoder(data: dict[str, Any]) -> None:
    text, hashes = encode_block_data(data)
    assert hashes is None and text == canonical_json(data).decode()


def test_unencodable_data_is_refused_on_either_path() -> None:
    bad_tx = {"id": "a", "public": "p", "hash": "h", "sign": "s", "data": {"x": float("inf")},
              "timestamp": 1.0}
    for data in ({"transactions": [bad_tx]}, {"transactions": [dict(bad_tx, timestamp=float("nan"))]},
                 {"x": float("nan")}):
        with pytest.raises(LedgerError):
            encode_block_data(data)


def test_a_block_whose_transaction_lies_about_its_hash_is_refused(producer: SigningKey,
                                                                  clients: list[SigningKey]) -> None:
    txs = [make_transaction(clients[0], {"num": i}).to_json() for i in range(3)]
    txs[1] = dict(txs[1], data={"num": 99})  # fields changed, hash and signature kept
    block = build_block(GENESIS, {"transactions": txs}, producer, copy=False)
    assert block.tx_hashes is not None and block.tx_hashes[1] != txs[1]["hash"]
    with pytest.raises(LedgerError, match="hash does not match"):
        check_block(block)
    parsed = Block.from_json(json.loads(json.dumps(block.to_json())), copy=False)
    with pytest.raises(LedgerError, match="hash does not match"):
        check_block(parsed)
    with pytest.raises(LedgerError, match="hash does not match"):
        check_block(Block.from_row(block.to_row()))


def test_hex_signature_check_refuses_other_forms_even_after_a_hit(clients: list[SigningKey]) -> None:
    key = clients[0]
    msg = hashlib.sha256(b"m").hexdigest()
    sig = key.sign(bytes.fromhex(msg)).hex()
    assert check_signature_hex(key.public_hex, sig, msg)
    before = verify_cache_stats()
    assert check_signature_hex(key.public_hex, sig, msg)  # remembered
    after = verify_cache_stats()
    assert after["hits"] == before["hits"] + 1 and after["verified"] == before["verified"]
    for pub, s, m in ((key.public_hex.upper(), sig, msg), (key.public_hex, sig.upper(), msg),
                      (key.public_hex, sig, msg.upper()), (key.public_hex, sig[:126], msg),
                      (key.public_hex, " " + sig[1:], msg), (key.public_hex, sig, msg + "0"),
                      (bytes.fromhex(key.public_hex), sig, msg), (key.public_hex, [sig], msg)):
        assert not check_signature_hex(pub, s, m)  # type: ignore[arg-type]
    assert not check_signature_hex(clients[1].public_hex, sig, msg)


def test_memo_keeps_what_was_checked_last() -> None:
    memo = crypto._Memo(4)
    for i in range(3):
        memo.put(i, True)
    assert memo.get(2) and memo.get(1)  # the older generation is still read
    memo.put(3, False)
    memo.put(4, True)
    assert memo.get(0) is None and memo.get(4) and memo.get(3) is False


@settings(max_examples=200, deadline=None)
@given(value=st.text(alphabet="0123456789abcdefABCDEF \n\t-g\u0660", min_size=62, max_size=66))
def test_is_digest_is_exactly_64_lowercase_hex(value: str) -> None:
    import re

    assert is_digest(value) == (re.fullmatch(r"[0-9a-f]{64}", value) is not None)
    assert not is_digest(value.encode()) and not is_digest(None)
    assert is_digest(hashlib.sha256(value.encode()).hexdigest())
    assert not is_digest(hashlib.sha256(value.encode()).hexdigest().upper())
