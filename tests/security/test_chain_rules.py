"""A dishonest block producer or relay against the chain's rules (real SQLite ledger files).

Each test starts from an honest federation, lets the attacker build the block it would
like to commit, and checks that the ledger refuses it with a stated reason, that
``verify_chain`` agrees, and that an honest round still commits afterwards.
"""

from __future__ import annotations

import sqlite3

import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Certificate, Charter, RuleViolation
from bcsfl_flower.ledger import LedgerError, SqliteLedger, build_block, make_transaction, verify_chain
from bcsfl_flower.ledger.replay import make_charter_block, make_enrolment

from ledger_kit import Federation, snapshot


def refused(ledger, block, reason: str) -> None:
    """``block`` is refused with ``reason`` and the head does not move."""
    head = ledger.latest().hash
    with pytest.raises(LedgerError, match=reason):
        ledger.append(block)
    assert ledger.latest().hash == head


def test_forged_stake_book_by_the_relay_is_refused(federation: Federation):
    """The relay hands a Sybil a huge stake: neither the old certificate nor Sybil signatures carry it."""
    sybil = SigningKey.generate()
    honest = federation.round_block(1)
    forged = federation.round_block(1, stakes={**honest.data["stakes"], "sybil": 1e9})
    refused(federation.ledger, forged, "stakes do not follow")
    # Same with every honest stake cut to the floor: the rules recompute the book.
    cut = {c: 0.1 for c in honest.data["stakes"]}
    refused(federation.ledger, federation.round_block(1, stakes=cut), "stakes do not follow")
    # The relay signs a 'certificate' with keys of its own choosing under Sybil ids.
    cert = Certificate.from_json(honest.data["certificate"])
    fake = Certificate(cert.statement, tuple(cert.statement.sign(f"sybil-{i}", sybil) for i in range(4)))
    refused(federation.ledger, federation.round_block(1, certificate=fake.to_json()), "valid committee signatures")
    federation.ledger.append(honest)
    assert federation.ledger.state().round == 1


def test_committee_named_in_the_block_is_ignored(federation: Federation):
    """A block that names its own committee (and signs as it) is checked against the chain's draw."""
    members = list(federation.ledger.state().committee())
    outsiders = [c for c in federation.keys if c not in members]
    block = federation.round_block(1, committee=outsiders + members[:2])
    refused(federation.ledger, block, "is not the committee the chain draws")


def test_grinding_block_data_gives_the_producer_no_choice_of_seed(federation: Federation, tmp_path):
    """Whatever timestamp, producer key or round number it picks, the next committee is the same."""
    committees, seeds = set(), set()
    for i in range(40):
        path = tmp_path / f"grind-{i}.db"
        snapshot(federation.ledger.path, path)
        with SqliteLedger(path) as copy:
            fork = Federation(copy, federation.authority, federation.keys)
            copy.append(fork.pool_block(1))
            fork.commit_round(1 + i % 5, timestamp=copy.latest().timestamp + i, producer=SigningKey.generate())
            committees.add(tuple(copy.state().committee()))
            seeds.add(copy.state().seed)
    assert len(committees) == 1 and len(seeds) == 1
    # The seed is a hash of the committee's signatures: the block hash does not enter it.
    block = federation.commit_round(1)
    assert federation.ledger.state().seed not in block.hash


def test_a_round_signed_by_fewer_than_two_thirds_is_refused(federation: Federation):
    refused(federation.ledger, federation.round_block(1, signers=2), "only 2 valid committee signatures, 3 needed")
    federation.commit_round(1, signers=3)


def test_committee_below_four_is_refused(tmp_path):
    """Three enrolled clients cannot form a committee: the round is refused, never shrunk."""
    with SqliteLedger(tmp_path / "small.db") as ledger:
        fed = Federation.start(ledger, clients=3)
        assert len(ledger.state().committee()) == 3
        with pytest.raises(LedgerError, match="only 3 of 3 enrolled clients can take a seat"):
            fed.commit_round(1)
    # Nor can a charter ask for a committee of one.
    authority = SigningKey.generate()
    with pytest.raises((RuleViolation, LedgerError, TypeError, ValueError)):
        with SqliteLedger(tmp_path / "one.db") as ledger:
            block = build_block(ledger.latest(), {"charter": {**Charter(authority.public_hex).to_json(),
                                                              "committee_size": 1}}, authority)
            ledger.append(block)


def test_sybil_registration_without_the_enrolment_key_is_refused(federation: Federation):
    mallory = SigningKey.generate()
    with pytest.raises(LedgerError, match="not signed by the enrolment authority"):
        federation.ledger.register_identity(make_enrolment(mallory, "sybil-1", mallory.public_hex))
    # Nor can anyone take an enrolled id over with another key.
    with pytest.raises(LedgerError, match="already enrolled with another key"):
        federation.ledger.register_identity(make_enrolment(federation.authority, "client-0", mallory.public_hex))
    assert federation.ledger.identity("sybil-1") is None
    assert federation.ledger.identity("client-0") == federation.keys["client-0"].public_hex


def test_rewritten_history_with_a_fresh_authority_fails_verify(federation: Federation, tmp_path):
    """An attacker with write access re-creates the chain under its own authority and keys."""
    federation.commit_round(1)
    federation.commit_round(2, rejected=["client-3"])
    real = federation.authority.public_hex
    assert verify_chain(federation.ledger, authority=real).ok
    with SqliteLedger(tmp_path / "rewritten.db") as fake:
        forger = Federation.start(fake, clients=6, authority=SigningKey.generate())  # the forger's authority
        forger.commit_round(1)
        forger.commit_round(2)  # client-3 never rejected
        report = verify_chain(fake, authority=real)
        assert not report.ok and "enrolment" in report.reason
        # Without an anchor the rewritten chain is consistent, so verify names the authority it trusted.
        alone = verify_chain(fake)
        assert alone.ok and forger.authority.public_hex[:16] in alone.summary()


def test_resigned_round_under_the_same_charter_is_refused(federation: Federation):
    """The producer rewrites a past round's decisions and signs it itself: no certificate covers it."""
    federation.commit_round(1)
    block = federation.round_block(2, rejected=["client-1"])
    cert = Certificate.from_json(block.data["certificate"])
    forged = federation.round_block(2, rejected=[], certificate=cert.to_json())
    refused(federation.ledger, forged, "statement differs in decisions, stakes")
    federation.ledger.append(block)


def test_truncated_chain_is_detected_against_an_anchor(federation: Federation, tmp_path):
    federation.commit_round(1)
    federation.commit_round(2)
    anchor = federation.ledger.latest()
    truncated = tmp_path / "truncated.db"
    snapshot(federation.ledger.path, truncated)
    with sqlite3.connect(truncated) as conn:
        conn.execute("DELETE FROM blocks WHERE sequence_no = ?", (anchor.sequence_no,))
    with SqliteLedger(truncated, create=False) as ledger:
        assert verify_chain(ledger).ok  # consistent on its own: a prefix of a valid chain
        by_head = verify_chain(ledger, head=anchor.hash)
        assert not by_head.ok and anchor.hash[:16] in by_head.reason
        by_height = verify_chain(ledger, height=anchor.sequence_no + 1)
        assert not by_height.ok and "truncated" in by_height.reason
    assert verify_chain(federation.ledger, head=anchor.hash, height=anchor.sequence_no + 1).ok


def test_stored_model_differing_from_the_signed_value_fails_verify(federation: Federation):
    block = federation.commit_round(1, model=b"the certified model")
    digest = block.data["model-params"]
    with sqlite3.connect(federation.ledger.path) as conn:
        conn.execute("UPDATE models SET data = ? WHERE hash = ?", (b"a poisoned model", digest))
    report = verify_chain(federation.ledger)
    assert not report.ok and digest in report.reason
    # Pointing the block at another stored model breaks the certificate instead.
    other = federation.ledger.put_model(b"another model")
    swapped = federation.round_block(2, **{"model-params": other})
    refused(federation.ledger, swapped, "statement differs in model")


def test_blocks_before_a_charter_and_second_charters_are_refused(tmp_path):
    authority, mallory = SigningKey.generate(), SigningKey.generate()
    with SqliteLedger(tmp_path / "bare.db") as ledger:
        with pytest.raises(LedgerError, match="no charter"):
            ledger.append(build_block(ledger.latest(), {"transactions": []}, mallory))
        ledger.install_charter(make_charter_block(authority, Charter(authority.public_hex)))
        with pytest.raises(LedgerError, match="another charter"):
            ledger.install_charter(make_charter_block(mallory, Charter(mallory.public_hex)))
        with pytest.raises(LedgerError, match="charter may only be block 1"):
            ledger.append(build_block(ledger.latest(), {"charter": Charter(mallory.public_hex).to_json()}, mallory))


def test_a_certified_round_cannot_smuggle_transactions(federation: Federation):
    """The certificate covers no transactions, so a round block may carry none (e.g. from unenrolled keys)."""
    mallory = SigningKey.generate()
    tx = make_transaction(mallory, {"model-params": federation.ledger.put_model(b"x"), "num": 1})
    refused(federation.ledger, federation.round_block(1, transactions=[tx.to_json()]), "carries no transactions")
