"""Behaviour every backend shares (parametrized over memory and SQLite)."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import (
    GENESIS,
    Block,
    Ledger,
    LedgerError,
    MemoryLedger,
    SqliteLedger,
    build_block,
    make_transaction,
    make_vote,
    open_ledger,
    verify_chain,
)

RoundFactory = Callable[..., Block]


def test_fresh_ledger_holds_only_genesis(ledger: Ledger) -> None:
    assert ledger.height() == 1
    assert ledger.latest() == GENESIS
    assert ledger.block(0) == GENESIS
    assert ledger.blocks() == [GENESIS]
    with pytest.raises(KeyError):
        ledger.block(1)
    assert verify_chain(ledger).ok


def test_append_and_read(ledger: Ledger, make_round: RoundFactory) -> None:
    appended = []
    for rnd in range(1, 4):
        block = make_round(ledger, rnd)
        ledger.append(block)
        appended.append(block)
    assert ledger.height() == 4
    assert ledger.latest() == appended[-1]
    assert ledger.block(2) == appended[1]
    assert ledger.blocks(1) == appended
    assert ledger.blocks(1, 3) == appended[:2]
    assert ledger.blocks(5) == []
    report = verify_chain(ledger)
    assert report.ok and report.blocks_checked == 4
    assert report.models_checked == 12  # 3 client models + 1 global model per round


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


def test_identities(ledger: Ledger, clients: list[SigningKey]) -> None:
    a, b = clients[0].public_hex, clients[1].public_hex
    ledger.register_identity("alice", a)
    ledger.register_identity("alice", a)  # idempotent
    ledger.register_identity("coord", b, role="committee")
    with pytest.raises(LedgerError):
        ledger.register_identity("alice", b)
    with pytest.raises(LedgerError):
        ledger.register_identity("bob", "not-a-key")
    assert ledger.identity("alice") == a
    assert ledger.identity("nobody") is None
    idents = ledger.identities()
    assert set(idents) == {"alice", "coord"}
    assert idents["coord"]["public_key"] == b and idents["coord"]["role"] == "committee"
    assert isinstance(idents["alice"]["registered_at"], float)


def test_block_identities_are_registered_on_append(
    ledger: Ledger, make_round: RoundFactory, clients: list[SigningKey]
) -> None:
    ledger.register_identity("client-0", clients[0].public_hex)
    ledger.append(make_round(ledger))
    assert ledger.identity("client-2") == clients[2].public_hex
    assert verify_chain(ledger).ok


def test_conflicting_block_identity_is_rejected(
    ledger: Ledger, make_round: RoundFactory, clients: list[SigningKey]
) -> None:
    ledger.register_identity("client-1", clients[0].public_hex)
    with pytest.raises(LedgerError, match="identity 'client-1'"):
        ledger.append(make_round(ledger))
    assert ledger.height() == 1
    assert ledger.identity("client-2") is None  # nothing of the block was written


def _resign(block: Block, key: SigningKey, **changes: Any) -> Block:
    """``block`` with ``changes``, re-hashed and re-signed so only the change is wrong."""
    changed = dataclasses.replace(block, **changes)
    digest = changed.expected_hash()
    return dataclasses.replace(changed, hash=digest, sign=key.sign(bytes.fromhex(digest)).hex())


def _bad_blocks(
    led: Ledger, make_round: RoundFactory, producer: SigningKey, clients: list[SigningKey]
) -> dict[str, tuple[Block, str]]:
    good = make_round(led, 2)
    tx = dict(good.data["transactions"][0])
    tx["data"] = {**tx["data"], "num": 10_000}  # changed after the client signed it
    forged_tx = {**good.data, "transactions": [tx, *good.data["transactions"][1:]]}
    missing = {**good.data, "model-params": sha256_hex(b"never stored")}
    value = sha256_hex(b"agreed global model")
    votes = [make_vote(clients[0], value), make_vote(clients[0], value)]
    votes.append({"public": clients[1].public_hex, "sign": "00" * 64})
    quorum = {**good.data, "quorum": {"value": value, "threshold": 2, "votes": votes}}
    other = SigningKey.from_seed(b"someone else")
    return {
        "wrong lastHash": (_resign(good, producer, last_hash="ab" * 32), "lastHash"),
        "wrong seq": (_resign(good, producer, sequence_no=5), "sequenceNo"),
        "bad signature": (
            dataclasses.replace(good, sign=other.sign(bytes.fromhex(good.hash)).hex()),
            "signature",
        ),
        "uppercase signature": (dataclasses.replace(good, sign=good.sign.upper()), "signature"),
        "hash mismatch": (dataclasses.replace(good, data={**good.data, "round": 9}), "hash"),
        "tampered tx": (_resign(good, producer, data=forged_tx), "hash does not match"),
        "missing model": (_resign(good, producer, data=missing), "not in the model store"),
        "insufficient quorum": (_resign(good, producer, data=quorum), "quorum not reached"),
        "earlier timestamp": (_resign(good, producer, timestamp=0.5), "timestamp"),
        "genesis replay": (GENESIS, "sequenceNo"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong lastHash",
        "wrong seq",
        "bad signature",
        "uppercase signature",
        "hash mismatch",
        "tampered tx",
        "missing model",
        "insufficient quorum",
        "earlier timestamp",
        "genesis replay",
    ],
)
def test_bad_appends_are_rejected(
    ledger: Ledger,
    make_round: RoundFactory,
    producer: SigningKey,
    clients: list[SigningKey],
    case: str,
) -> None:
    first = make_round(ledger, 1)
    ledger.append(first)
    block, reason = _bad_blocks(ledger, make_round, producer, clients)[case]
    with pytest.raises(LedgerError, match=reason):
        ledger.append(block)
    assert ledger.height() == 2
    assert ledger.latest() == first
    assert verify_chain(ledger).ok


def test_valid_quorum_is_accepted(
    ledger: Ledger, producer: SigningKey, clients: list[SigningKey]
) -> None:
    value = sha256_hex(b"agreed")
    votes = [make_vote(k, value) for k in clients]
    votes[2] = {"public": clients[2].public_hex, "sign": "11" * 64}  # one bad vote
    data = {"quorum": {"value": value, "threshold": 2, "votes": votes}}
    ledger.append(build_block(ledger.latest(), data, producer))
    assert verify_chain(ledger).ok


def test_append_is_checked_against_the_current_head(
    ledger: Ledger, make_round: RoundFactory
) -> None:
    a = make_round(ledger, 1)
    b = make_round(ledger, 1)  # a competing block on the same parent
    ledger.append(a)
    with pytest.raises(LedgerError):
        ledger.append(b)
    with pytest.raises(LedgerError):
        ledger.append(a)  # no duplicates either


def test_concurrent_threads_never_fork(
    ledger: Ledger, producer: SigningKey, clients: list[SigningKey]
) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        appended = 0
        try:
            while appended < 8:
                digest = ledger.put_model(os.urandom(16))
                tx = make_transaction(clients[n % 3], {"model-params": digest, "num": n})
                block = build_block(ledger.latest(), {"transactions": [tx]}, producer)
                try:
                    ledger.append(block)
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
    assert ledger.height() == 33
    assert verify_chain(ledger).ok


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
