"""Vouches: a node skips verifying a signature only on f+1 replicas' signed word, and each
party that could lie about it (a peer, the block producer, both) is tried as the attacker.

Real keys, real blocks, the real signature memo: a skipped verification shows as a
signature check answered without one (``verify_cache_stats``), a trusted forgery would
show as a block that ``check_block`` accepts.
"""

from __future__ import annotations

import asyncio

import pytest

from bcsfl_flower import crypto
from bcsfl_flower.ledger.block import GENESIS, LedgerError, build_block, make_transaction
from bcsfl_flower.ledger.rules import check_block
from bcsfl_flower.ledger.block import Transaction
from bcsfl_flower.ledger.vouch import (MAX_CHECK_TXS, MAX_DIGESTS, VouchBook, VouchOutbox, helpers, make_vouch,
                                       read_vouch, triple_digest)
from bcsfl_flower.ledger.vouch_driver import VouchDriver
from ledger_kit import seeded

REPLICAS = [seeded(f"replica-{i}") for i in range(7)]
CLIENT = seeded("client")


def keys(n: int) -> list[str]:
    return [k.public_hex for k in REPLICAS[:n]]


@pytest.fixture(autouse=True)
def fresh_memo():
    crypto.set_verify_cache(True)  # clears the memo: each test starts with nothing verified
    yield
    crypto.set_verify_cache(True)


def signed_txs(n: int, start: int = 0) -> list[dict]:
    return [make_transaction(CLIENT, {"n": start + i}).to_json() for i in range(n)]


def forged(tx: dict) -> dict:
    return dict(tx, sign="11" * 64)


def digest(tx: dict) -> bytes:
    return triple_digest(tx["public"], tx["sign"], tx["hash"])


def block_by(producer: int, txs: list[dict]):
    return build_block(GENESIS, {"transactions": txs}, REPLICAS[producer])


def real_checks(block) -> int:
    """Signature checks that ``check_block`` had to verify for real (0: all vouched for or remembered)."""
    before = crypto.verify_cache_stats()["verified"]
    check_block(block)
    return crypto.verify_cache_stats()["verified"] - before


def trust(book: VouchBook, block) -> int:
    return sum(crypto.remember_valid(*t) for t in book.trusted(block))


def test_a_vouch_is_read_only_under_the_key_of_the_replica_it_names():
    d = [digest(tx) for tx in signed_txs(3)]
    msg = make_vouch(1, d, REPLICAS[1])
    assert read_vouch(msg, keys(4), own=0) == (1, d)
    assert read_vouch(msg, keys(4), own=1) is None  # our own, echoed back
    assert read_vouch(dict(msg, **{"from": 2}), keys(4), own=0) is None  # replica 1's vouch passed off as 2's
    assert read_vouch(make_vouch(2, d, REPLICAS[1]), keys(4), own=0) is None  # signed by the wrong key
    assert read_vouch(dict(msg, d=msg["d"][:-2] + "00"), keys(4), own=0) is None  # digests altered in transit
    for bad in ({"from": "1"}, {"from": 9}, {"d": "zz" * 16}, {"d": msg["d"][:-2]}, {"d": ""}, {"sig": "00"},
                {"d": "00" * 16 * (MAX_DIGESTS + 1)}):
        assert read_vouch(dict(msg, **bad), keys(4), own=0) is None
    with pytest.raises(ValueError):
        make_vouch(1, [], REPLICAS[1])


def test_the_outbox_signs_once_per_batch():
    out = VouchOutbox(3, REPLICAS[3])
    assert out.add([b"\x01" * 16] * (MAX_DIGESTS - 1)) == [] and len(out.pending) == MAX_DIGESTS - 1
    [full] = out.add([b"\x02" * 16] * 2)
    assert read_vouch(full, keys(4), own=0)[1][-1] == b"\x02" * 16 and len(out.pending) == 1
    [rest] = out.flush()
    assert read_vouch(rest, keys(4), own=0) == (3, [b"\x02" * 16]) and out.flush() == []


def test_at_four_nodes_the_producer_and_one_voucher_spare_the_verification():
    txs = signed_txs(3)
    block = block_by(0, txs)
    book = VouchBook(keys(4))
    book.add(1, [digest(txs[0])])  # node 1 received tx 0 from its client and verified it
    book.add(0, [digest(txs[1])])  # the producer vouching too counts once
    assert trust(book, block) == 1  # (this checked the block's own signature)
    assert real_checks(block) == 2  # txs 1 and 2; tx 0 came from the memo


def test_a_byzantine_producer_cannot_slip_in_a_forgery_no_other_replica_vouched_for():
    good, bad = signed_txs(2)
    block = block_by(0, [good, forged(bad)])
    book = VouchBook(keys(4))
    book.add(1, [digest(good)])
    assert trust(book, block) == 1  # the forgery has the producer's word only: f of f+1
    with pytest.raises(LedgerError, match="invalid signature"):
        check_block(block)


def test_a_byzantine_peer_vouching_for_a_forgery_is_stopped_by_a_correct_producer():
    """The lying peer's vouch alone is f of f+1; a correct primary verifies what it batches
    (tests/ledger/test_ledger_batcher.py), so the forgery never gets a block to sit in."""
    bad = forged(signed_txs(1)[0])
    book = VouchBook(keys(4))
    book.add(2, [digest(bad)])
    outsider = build_block(GENESIS, {"transactions": [bad]}, seeded("not a replica"))
    assert book.trusted(outsider) == []  # only a replica's block counts as the second word
    with pytest.raises(LedgerError, match="invalid signature"):
        check_block(outsider)


def test_a_block_altered_after_signing_vouches_for_nothing():
    txs = signed_txs(2)
    block = block_by(0, txs)
    book = VouchBook(keys(4))
    book.add(1, [digest(tx) for tx in txs])
    relayed = build_block(GENESIS, {"transactions": [txs[0], forged(txs[1])]}, REPLICAS[0])
    fields = {k: v for k, v in block.__dict__.items() if k != "_encoded"}
    tampered = type(block)(**{**fields, "data": relayed.data})  # the producer's hash and signature kept
    assert book.trusted(tampered) == []
    assert len(book.trusted(block)) == 2


def test_at_seven_nodes_it_takes_three_replicas():
    """f = 2: a faulty producer and a faulty voucher together are still one short."""
    bad = forged(signed_txs(1)[0])
    block = block_by(0, [bad])
    book = VouchBook(keys(7))
    book.add(1, [digest(bad)])
    assert book.trusted(block) == []
    with pytest.raises(LedgerError, match="invalid signature"):
        check_block(block)
    good = signed_txs(1, start=5)
    block = block_by(0, good)
    book.add(1, [digest(good[0])])
    book.add(4, [digest(good[0])])
    assert trust(book, block) == 1 and real_checks(block) == 0


def test_the_book_forgets_the_oldest_half_and_the_memo_takes_only_well_formed_triples():
    book = VouchBook(keys(4), limit=4)
    for i in range(5):
        book.add(1, [bytes([i]) * 16])
    assert book.vouchers(b"\x00" * 16) == 0 and book.vouchers(b"\x04" * 16) == 0b10
    tx = signed_txs(1)[0]
    assert not crypto.remember_valid(tx["public"].upper(), tx["sign"], tx["hash"])
    assert not crypto.remember_valid(tx["public"], tx["sign"][:-2], tx["hash"])
    assert not crypto.remember_valid(None, tx["sign"], tx["hash"])
    crypto.set_verify_cache(False)
    assert not crypto.remember_valid(tx["public"], tx["sign"], tx["hash"])  # memo off: every check is real


def test_helpers_make_up_f_plus_one_with_the_receiver_and_the_producer():
    assert helpers(4, own=1, primary=0) == []  # node 1 and the primary's block: 2 = f+1
    assert helpers(4, own=0, primary=0) == [1]  # the primary received it: one more
    assert helpers(4, own=3, primary=0) == []
    assert helpers(7, own=3, primary=0) == [4]  # f+1 = 3
    assert helpers(7, own=6, primary=0) == [1]  # wraps round, skipping the primary
    assert helpers(7, own=2, primary=2) == [3, 4]
    assert helpers(1, own=0, primary=0) == []
    assert helpers(4, own=0, primary=0, down={1}) == [2]  # the next one is not connected: the one after
    assert helpers(4, own=0, primary=0, down={1, 2, 3}) == [1]  # none is: still the next one
    assert helpers(7, own=2, primary=2, down={3}) == [4, 5]


def _drivers(n: int, primary: int) -> tuple[list[VouchDriver], list[tuple[int, int, dict]]]:
    """n drivers whose sends are collected as (from, to, message)."""
    sent: list[tuple[int, int, dict]] = []
    drivers = [VouchDriver(i, REPLICAS[i], keys(n), lambda to, msg, i=i: sent.append((i, to, msg)),
                           primary=lambda: primary) for i in range(n)]
    return drivers, sent


def test_the_primary_asks_its_helper_who_vouches_only_for_what_verifies():
    """A primary's own client transactions: verified by the primary and the one replica it asks,
    so the other two backups verify none of them; a forgery in the check gets no vouch."""
    async def scenario():
        drivers, sent = _drivers(4, primary=0)
        txs = signed_txs(3)
        admitted = [Transaction.from_json(t) for t in txs]
        assert all(crypto.check_signature_hex(t.public, t.sign, t.hash) for t in admitted)  # admission
        asked = drivers[0].verified(admitted)
        checks = [(to, m) for frm, to, m in sent if m["type"] == "check"]
        assert [to for to, _ in checks] == [1] and len(checks[0][1]["txs"]) == 3
        # in transit (or from a faulty primary) one transaction is forged: the helper checks each
        msg = dict(checks[0][1], txs=checks[0][1]["txs"][:2] + [forged(txs[2]), "garbage"])
        drivers[1].check(msg)
        assert drivers[1].stats["txs_checked"] == 2
        vouches = [(to, m) for frm, to, m in sent if m["type"] == "vouch" and frm == 1]  # at once
        assert sorted(to for to, _ in vouches) == [0, 2, 3]
        for to, m in vouches:
            drivers[to].receive(m)
        assert not asked.future.done()  # the primary still waits for the forgery's vouch: it never comes
        drivers[0].forget(asked)
        assert drivers[0]._awaited == {}
        drivers[0].flush()
        crypto.set_verify_cache(True)  # node 2 starts with nothing verified itself
        block = block_by(0, txs)
        drivers[2].before_execute(block)
        assert drivers[2].stats["txs_trusted"] == 2  # tx 2 has the producer's word only
        assert real_checks(block) == 1
    asyncio.run(scenario())


def test_a_backup_asks_nobody_at_four_nodes_and_a_check_reads_at_most_its_bound():
    async def scenario():
        drivers, sent = _drivers(4, primary=0)
        assert drivers[2].verified([Transaction.from_json(t) for t in signed_txs(2)]) is None
        assert [m["type"] for _, _, m in sent] == []  # the vouch waits for its timer
        drivers[2].flush()
        assert {m["type"] for _, _, m in sent} == {"vouch"}
        many = signed_txs(MAX_CHECK_TXS + 1)
        drivers[3].check({"type": "check", "txs": many})
        assert drivers[3].stats["txs_checked"] == MAX_CHECK_TXS
        drivers[3].check({"type": "check", "txs": "not a list"})
        assert drivers[3].stats["txs_checked"] == MAX_CHECK_TXS
        for d in drivers:
            d.close()
    asyncio.run(scenario())


def test_the_primary_waits_until_every_asked_replica_vouched():
    async def scenario():
        drivers, sent = _drivers(7, primary=2)  # f+1 = 3: the primary asks replicas 3 and 4
        asked = drivers[2].verified([Transaction.from_json(t) for t in signed_txs(4)])
        checks = [(to, m) for _, to, m in sent if m["type"] == "check"]
        assert sorted(to for to, _ in checks) == [3, 4]
        for to, m in checks:
            drivers[to].check(m)
            assert not asked.future.done()
            [vouch] = [m for frm, dest, m in sent if m["type"] == "vouch" and frm == to and dest == 2]
            drivers[2].receive(vouch)
        assert asked.future.done() and drivers[2]._awaited == {}
        drivers[2].close()
    asyncio.run(scenario())
