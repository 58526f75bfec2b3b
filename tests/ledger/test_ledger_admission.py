"""What a node admits on arrival and executes in order, without a cluster: admission and ops.

The same functions serve the HTTP service (on arrival) and every node's execution of an
ordered operation; here they run against a chartered in-memory ledger.
"""

from __future__ import annotations

import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.crypto import sha256_hex
from bcsfl_flower.ledger import MemoryLedger, build_block, make_enrolment, make_transaction
from bcsfl_flower.ledger.admission import Refused, admit_block, admit_enrolment, admit_transaction
from bcsfl_flower.ledger.ops import MissingModel, apply_op, encode_block_op, encode_model_op, parse_op
from bcsfl_flower.ledger.receipts import make_receipt
from bcsfl_flower.ledger.replay import admissible
from bcsfl_flower.ledger.upload import UploadRefused, check_upload, upload_signature


@pytest.fixture
def fed() -> Federation:
    """Four clients on a memory ledger whose charter allows models up to 1 KiB."""
    return Federation.start(MemoryLedger(), clients=4, max_model_bytes=1024)


def _status(fn, *args) -> int:  # noqa: ANN001
    with pytest.raises(Refused) as info:
        fn(*args)
    return info.value.status


def test_enrolment_admission(fed: Federation) -> None:
    state, mallory = fed.ledger.state(), seeded("mallory")
    assert _status(admit_enrolment, {"client_id": "x", "public_key": mallory.public_hex}, state) == 401
    assert _status(admit_enrolment, [1, 2], state) == 401
    assert _status(admit_enrolment, make_enrolment(mallory, "x", mallory.public_hex).to_json(), state) == 403
    forged = make_enrolment(fed.authority, "x", mallory.public_hex).to_json()
    forged["data"]["enrol"]["client_id"] = "y"  # changed after the authority signed
    assert _status(admit_enrolment, forged, state) == 403
    assert _status(admit_enrolment, make_enrolment(fed.authority, "client-0", mallory.public_hex).to_json(),
                   state) == 409
    assert _status(admit_enrolment, make_enrolment(fed.authority, "x", "short").to_json(), state) == 422
    assert _status(admit_enrolment, make_enrolment(fed.authority, "\ud800", mallory.public_hex).to_json(),
                   state) == 422
    tx, new = admit_enrolment(make_enrolment(fed.authority, "x", mallory.public_hex).to_json(), state)
    assert new and tx.data["enrol"]["client_id"] == "x"
    assert admit_enrolment(fed.enrolment("client-0").to_json(), state)[1] is False  # already enrolled


def test_transaction_admission(fed: Federation) -> None:
    state = fed.ledger.state()
    keys = {i.public_key for i in state.identities.values()}
    stored = fed.ledger.put_model(b"stored")

    def has(digest: str) -> bool:
        return fed.ledger.has_model(digest)

    ok = make_transaction(fed.keys["client-1"], {"model-params": stored, "num": 1}).to_json()
    assert admit_transaction(0, ok, state, keys, has).id == ok["id"]
    stranger = make_transaction(seeded("stranger"), {"num": 1}).to_json()
    assert _status(admit_transaction, 0, stranger, state, keys, has) == 403
    missing = make_transaction(fed.keys["client-1"], {"model-params": sha256_hex(b"no")}).to_json()
    assert _status(admit_transaction, 0, missing, state, keys, has) == 422
    rogue_enrolment = make_enrolment(seeded("stranger"), "s", seeded("stranger").public_hex).to_json()
    assert _status(admit_transaction, 0, rogue_enrolment, state, keys, has) == 403
    assert _status(admit_transaction, 0, {"id": 1}, state, keys, has) == 422


def test_block_admission_is_a_dry_run_of_the_rules(fed: Federation) -> None:
    fed.ledger.append(fed.pool_block(1))  # the round's pool, on which its block decides
    led, head, state = fed.ledger, fed.ledger.latest(), fed.ledger.state()
    admit_block(fed.round_block(1), head, state)
    assert _status(admit_block, fed.round_block(1, signers=1), head, state) == 403
    mallory = seeded("mallory")
    forged = build_block(head, {"round": 99, "transactions": [], "stakes": {"m": 1e9}}, mallory)
    assert _status(admit_block, forged, head, state) == 403
    odd = build_block(head, {"round": 1, "model-params": "ab" * 32, "inputs": [{"client_id": [1],
                      "packet_id": "p", "model_hash": "ab" * 32}], "decisions": [], "refused": []}, mallory)
    assert _status(admit_block, odd, head, state) in (403, 422)
    admit_block(build_block(led.block(2), {"round": 9}, mallory), head, state)  # stale: left to execution
    assert led.latest() == head  # nothing was written


def test_model_op_carries_its_uploader_and_every_node_checks_it(fed: Federation) -> None:
    led, data = fed.ledger, b"weights"
    digest = sha256_hex(data)
    nodes = [seeded(f"node-{j}") for j in range(4)]
    replicas = [k.public_hex for k in nodes]
    receipts = [make_receipt(j, nodes[j], digest, len(data)) for j in (0, 1)]  # f + 1 = 2 of 4

    def op(client: str, sign: str, size: int = len(data), signed: list = receipts) -> str:  # noqa: ANN001
        return encode_model_op(digest, size, client, sign, signed)

    good = op("client-2", upload_signature(fed.keys["client-2"], digest))
    for value, why in ((op("sybil", upload_signature(seeded("m"), digest)), "not enrolled"),
                       (op("client-2", upload_signature(seeded("m"), digest)), "signature"),
                       (op("", ""), "headers"),
                       (op("client-2", upload_signature(fed.keys["client-2"], digest), signed=receipts[:1]),
                        "2 (f+1) are needed")):
        result = apply_op(led, parse_op(value), replicas=replicas, data=data)
        assert not result["ok"] and why in result["reason"]
    assert not led.has_model(digest)
    with pytest.raises(MissingModel):  # valid, but no bytes at hand: the node fetches them first
        apply_op(led, parse_op(good), replicas=replicas)
    assert apply_op(led, parse_op(good), replicas=replicas, data=data) == {"ok": True, "hash": digest,
                                                                             "size": len(data)}
    assert apply_op(led, parse_op(good), replicas=replicas)["ok"]  # stored: no bytes needed again
    assert not apply_op(led, parse_op(good))["ok"]  # no replica keys: no receipt can be checked
    result = apply_op(led, parse_op(op("client-2", upload_signature(fed.keys["client-2"], digest), size=1025)),
                      replicas=replicas)
    assert not result["ok"] and "max_model_bytes" in result["reason"]
    with pytest.raises(UploadRefused) as info:
        check_upload(led.state(), None, None, digest)
    assert info.value.status == 401


def test_block_op_executes_once_and_refuses_a_rival(fed: Federation) -> None:
    led = fed.ledger
    block = fed.round_block(1)
    assert apply_op(led, parse_op(encode_block_op(block)))["ok"]
    assert apply_op(led, parse_op(encode_block_op(block)))["duplicate"]
    rival = fed.round_block(1, rejected=["client-0"], head=led.block(block.sequence_no - 1))
    result = apply_op(led, parse_op(encode_block_op(rival)))
    assert not result["ok"] and "already committed" in result["reason"]


def test_admissible_keeps_the_first_of_conflicting_enrolments(fed: Federation) -> None:
    a = make_enrolment(fed.authority, "twice", seeded("a").public_hex).to_json()
    b = make_enrolment(fed.authority, "twice", seeded("b").public_hex).to_json()
    newcomer_tx = make_transaction(seeded("a"), {"num": 1}).to_json()
    stranger_tx = make_transaction(seeded("stranger"), {"num": 1}).to_json()
    kept = admissible(fed.ledger.state(), [a, b, newcomer_tx, stranger_tx])
    assert kept == [a, newcomer_tx]
