"""Behaviour every backend shares (parametrized over memory and SQLite)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.federation import Certificate, Charter
from bcsfl_flower.ledger import (
    GENESIS,
    Block,
    Ledger,
    LedgerError,
    MemoryLedger,
    SqliteLedger,
    build_block,
    make_charter_block,
    make_enrolment,
    make_transaction,
    open_ledger,
    verify_chain,
)


def test_fresh_ledger_holds_only_genesis(ledger: Ledger) -> None:
    assert ledger.height() == 1
    assert ledger.latest() == GENESIS
    assert ledger.block(0) == GENESIS
    assert ledger.blocks() == [GENESIS]
    with pytest.raises(KeyError):
        ledger.block(1)
    report = verify_chain(ledger)  # consistent, but nobody's: no authority vouches for it
    assert not report.ok and report.reason == "no charter: the chain has no authority"


def test_nothing_before_the_charter(ledger: Ledger, producer: SigningKey) -> None:
    with pytest.raises(LedgerError, match="no charter"):
        ledger.append(build_block(GENESIS, {"transactions": []}, producer))
    authority = seeded("authority")
    with pytest.raises(LedgerError, match="no charter"):
        ledger.register_identity(make_enrolment(authority, "client-0", producer.public_hex))
    with pytest.raises(LedgerError, match="signed by the enrolment key it names"):
        ledger.append(build_block(GENESIS, {"charter": Charter(authority.public_hex).to_json()}, producer))
    assert ledger.height() == 1


def test_append_and_read(fed: Federation) -> None:
    led = fed.ledger
    start = led.height()
    appended = [fed.commit_round(rnd) for rnd in (1, 2, 3)]  # each on the pool block of its round
    assert led.height() == start + 6
    assert led.latest() == appended[-1]
    assert led.block(start + 3) == appended[1]
    stored = led.blocks(start)
    assert stored[1::2] == appended
    assert all(len(b.data["transactions"]) == 1 and len(b.data["transactions"][0]["data"]["pool"]) == 5
               for b in stored[0::2])  # every client's package pooled (one transaction) before its round
    assert led.blocks(start, start + 4) == stored[:4]
    assert led.blocks(start, start + 4)[1::2] == appended[:2]
    assert led.blocks(99) == []
    report = verify_chain(led, authority=fed.authority.public_hex)
    assert report.ok and report.blocks_checked == start + 6
    assert report.models_checked == 3 + 15  # the three global models and the five clients' updates of each round
    assert report.head == appended[-1].hash and appended[-1].hash in report.summary()
    assert fed.authority.public_hex[:16] in report.summary()


def test_model_store(ledger: Ledger) -> None:
    digest = ledger.put_model(b"weights")
    assert digest == sha256_hex(b"weights")
    assert ledger.put_model(b"weights") == digest  # idempotent
    assert ledger.has_model(digest)
    assert ledger.get_model(digest) == b"weights"
    assert not ledger.has_model(sha256_hex(b"other"))
    with pytest.raises(KeyError):
        ledger.get_model(sha256_hex(b"other"))
    assert ledger.model_digests() == [digest]


def test_models_over_the_charters_limit_are_refused(ledger: Ledger) -> None:
    Federation.start(ledger, clients=0, max_model_bytes=1000)
    ledger.put_model(b"x" * 1000)
    with pytest.raises(LedgerError, match="exceeds the charter's max_model_bytes"):
        ledger.put_model(b"x" * 1001)
    assert not ledger.has_model(sha256_hex(b"x" * 1001))


def test_enrolment_by_the_authority(fed: Federation) -> None:
    led, key = fed.ledger, fed.keys["client-0"].public_hex
    led.register_identity(fed.enrolment("client-0"))  # idempotent: the same enrolment again
    led.register_identity(make_enrolment(fed.authority, "relay", seeded("relay").public_hex, "relay"))
    assert led.identity("client-0") == key
    assert led.identity("nobody") is None
    idents = led.identities()
    assert set(idents) == {*fed.clients, "relay"}
    assert idents["relay"]["role"] == "relay" and idents["relay"]["stake"] == 0.0
    assert idents["client-0"]["stake"] == 10.0 and idents["client-0"]["enrolled_at"] == 2
    assert "relay" not in led.state().stakes()


def test_enrolment_without_the_authority_is_refused(fed: Federation) -> None:
    led = fed.ledger
    height = led.height()
    mallory = SigningKey.from_seed(b"mallory")
    with pytest.raises(LedgerError, match="not signed by the enrolment authority"):
        led.register_identity(make_enrolment(mallory, "sybil", mallory.public_hex))
    with pytest.raises(LedgerError, match="already enrolled with another key"):
        led.register_identity(make_enrolment(fed.authority, "client-1", mallory.public_hex))
    with pytest.raises(LedgerError, match="role must be one of"):
        led.register_identity(make_enrolment(fed.authority, "boss", mallory.public_hex, "committee"))
    with pytest.raises(LedgerError, match="public key is not 64-char"):
        led.register_identity(make_enrolment(fed.authority, "bob", "not-a-key"))
    assert led.height() == height and led.identity("sybil") is None


def test_transactions_need_an_enrolled_key(fed: Federation, clients: list[SigningKey]) -> None:
    led = fed.ledger
    block = fed.tx_block([fed.tx("client-0", model=b"update 0", num=1), fed.tx("client-1", num=2)])
    led.append(block)
    stranger = make_transaction(clients[0], {"num": 3})
    with pytest.raises(LedgerError, match="signed by a key no enrolled identity holds"):
        led.append(fed.tx_block([fed.tx("client-2", num=4), stranger]))
    assert led.latest() == block
    # An enrolment and the newcomer's first transaction may share a block, in that order.
    newcomer = make_enrolment(fed.authority, "late", clients[1].public_hex)
    led.append(fed.tx_block([newcomer, make_transaction(clients[1], {"num": 5})]))
    assert led.identity("late") == clients[1].public_hex


def _resign(block: Block, key: SigningKey, **changes: Any) -> Block:
    """``block`` with ``changes``, re-hashed and re-signed so only the change is wrong."""
    changed = dataclasses.replace(block, **changes)
    digest = changed.expected_hash()
    return dataclasses.replace(changed, hash=digest, sign=key.sign(bytes.fromhex(digest)).hex())


def _bad_blocks(fed: Federation, producer: SigningKey) -> dict[str, tuple[Block, str]]:
    good = fed.round_block(2)
    txb = fed.tx_block([fed.tx("client-0", num=1)])
    tx = dict(txb.data["transactions"][0])
    tx["data"] = {**tx["data"], "num": 10_000}  # changed after the client signed it
    cert = Certificate.from_json(good.data["certificate"])
    other = SigningKey.from_seed(b"someone else")
    stakes = dict(good.data["stakes"], **{"client-0": 99.0})
    return {
        "wrong lastHash": (_resign(good, producer, last_hash="ab" * 32), "lastHash"),
        "wrong seq": (_resign(good, producer, sequence_no=99), "sequenceNo"),
        "bad signature": (
            dataclasses.replace(good, sign=other.sign(bytes.fromhex(good.hash)).hex()),
            "signature",
        ),
        "uppercase signature": (dataclasses.replace(good, sign=good.sign.upper()), "signature"),
        "hash mismatch": (dataclasses.replace(good, data={**good.data, "round": 9}), "hash"),
        "tampered tx": (_resign(txb, producer, data={"transactions": [tx]}), "hash does not match"),
        "missing model": (_resign(good, producer, data={**good.data, "model-params": sha256_hex(b"never")}),
                          "not in the model store"),
        "no certificate": (fed.round_block(2, certificate=None), "certificate must have"),
        "too few signers": (fed.round_block(2, signers=2), "only 2 valid committee signatures, 3 needed"),
        "signers outside the committee": (
            fed.round_block(2, certificate=Certificate(
                cert.statement, tuple(cert.statement.sign(f"sybil-{i}", other) for i in range(4))).to_json()),
            "valid committee signatures"),
        "stakes that do not follow": (fed.round_block(2, stakes=stakes), "stakes do not follow"),
        "round not after the last": (fed.round_block(1), "does not follow the last certified round"),
        "earlier timestamp": (_resign(good, producer, timestamp=0.5), "timestamp"),
        "genesis replay": (GENESIS, "sequenceNo"),
        "second charter": (build_block(fed.ledger.latest(), {"charter": Charter(other.public_hex).to_json()},
                                       other), "charter may only be block 1"),
    }


BAD = ["wrong lastHash", "wrong seq", "bad signature", "uppercase signature", "hash mismatch", "tampered tx",
       "missing model", "no certificate", "too few signers", "signers outside the committee",
       "stakes that do not follow", "round not after the last", "earlier timestamp", "genesis replay",
       "second charter"]


@pytest.mark.parametrize("case", BAD)
def test_bad_appends_are_rejected(fed: Federation, case: str) -> None:
    fed.commit_round(1)
    pooled = fed.pool_block(2)  # round 2's pool, on which the bad blocks are built
    fed.ledger.append(pooled)
    block, reason = _bad_blocks(fed, fed.producer)[case]
    with pytest.raises(LedgerError, match=reason):
        fed.ledger.append(block)
    assert fed.ledger.latest() == pooled
    assert verify_chain(fed.ledger).ok
    fed.commit_round(2)  # an honest round still commits


def test_append_is_checked_against_the_current_head(fed: Federation) -> None:
    a = fed.round_block(1)
    b = fed.round_block(1, rejected=["client-2"])  # a competing block on the same parent
    fed.ledger.append(a)
    with pytest.raises(LedgerError):
        fed.ledger.append(b)
    with pytest.raises(LedgerError):
        fed.ledger.append(a)  # no duplicates either


def test_state_follows_the_certified_decisions(fed: Federation) -> None:
    led = fed.ledger
    before = led.state()
    assert before.round == 0 and len(before.committee()) == 4
    fed.commit_round(1, rejected=["client-4"])
    after = led.state()
    assert after.round == 1 and after.stakes()["client-4"] == 5.0 and after.stakes()["client-0"] == 11.0
    assert led.state_at(before.height - 1) == before
    assert after.seed != before.seed  # the next committee is drawn from the certificate's beacon


def test_concurrent_threads_never_fork(fed: Federation) -> None:
    led = fed.ledger
    start = led.height()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        appended = 0
        try:
            while appended < 8:
                tx = fed.tx(fed.clients[n], model=os.urandom(16), num=n)
                block = build_block(led.latest(), {"transactions": [tx]}, fed.producer)
                try:
                    led.append(block)
                    appended += 1
                except LedgerError:
                    pass  # lost the race: rebuild on the new head
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert led.height() == start + 32
    assert verify_chain(led).ok


@pytest.mark.parametrize("url", ["memory", "memory://"])
def test_open_memory(url: str) -> None:
    with open_ledger(url) as led:
        assert isinstance(led, MemoryLedger)


def test_open_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///rel.db") as led:
        assert isinstance(led, SqliteLedger)
    assert (tmp_path / "rel.db").exists()
    absolute = tmp_path / "sub" / "abs.db"
    with open_ledger("sqlite:///" + str(absolute)) as led:
        assert isinstance(led, SqliteLedger)
    assert absolute.exists()
    with open_ledger(str(tmp_path / "bare.db")) as led:
        assert isinstance(led, SqliteLedger)
    with open_ledger(tmp_path / "pathlike.db") as led:
        assert isinstance(led, SqliteLedger)
    with pytest.raises(FileNotFoundError):
        open_ledger(tmp_path / "missing.db", create=False)
    with pytest.raises(FileNotFoundError):
        open_ledger(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


def test_open_remote_unreachable_and_unknown() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LedgerError):
        open_ledger(f"http://127.0.0.1:{port}").latest()
    with pytest.raises(ValueError):
        open_ledger("ftp://x")


def test_charter_block_must_name_its_signer() -> None:
    a, b = seeded("a"), seeded("b")
    with pytest.raises(LedgerError, match="must name the key that signs it"):
        make_charter_block(a, Charter(b.public_hex))
