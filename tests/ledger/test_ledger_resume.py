"""The replay point of a SQLite ledger: a reopened file re-checks only the blocks above it.

Real files in ``tmp_path``. The point's thresholds are lowered (``resume.POINT_TXS`` /
``POINT_BLOCKS``) so that a chain of a few blocks places it where a test wants it, and
the signature memo is off, so that ``verify_cache_stats()["verified"]`` counts every
Ed25519 check a replay makes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.crypto import set_verify_cache, verify_cache_stats
from bcsfl_flower.federation import FederationState
from bcsfl_flower.ledger import LedgerError, SqliteLedger, make_transaction, open_ledger, verify_chain
from bcsfl_flower.ledger import resume
from bcsfl_flower.ledger.replay import Replay, replay
from bcsfl_flower.ledger.snapshot import federation_digest

EXTRA = 4  # transaction blocks above the point
PER_BLOCK = 3  # transactions in each


@pytest.fixture(autouse=True)
def no_memo() -> Iterator[None]:
    set_verify_cache(False)
    yield
    set_verify_cache(True)


def _point_every(monkeypatch: pytest.MonkeyPatch, blocks: int) -> None:
    monkeypatch.setattr(resume, "POINT_BLOCKS", blocks)
    monkeypatch.setattr(resume, "POINT_TXS", 10**9)


def _federation(led: SqliteLedger) -> Federation:
    """Enrolments (a relay too), two rounds (one rejection moves a stake), a transaction
    block, and a pool waiting for round 3: every field of the state is set."""
    fed = Federation.start(led)
    fed.enrol(["relay-0"], role="relay")
    fed.commit_round(1)
    fed.commit_round(2, rejected=["client-3"])
    led.append(fed.tx_block([fed.tx("client-0", model=b"an update", num=3)]))
    fed.enrol(["client-5"])
    led.append(fed.pool_block(3, ["client-1", "client-4"]))
    return fed


def _chain(path: Path, monkeypatch: pytest.MonkeyPatch, extra: int = EXTRA) -> tuple[int, FederationState]:
    """A file whose point is at the pool block, ``extra`` transaction blocks above it;
    the point's sequence number and the state after the head."""
    _point_every(monkeypatch, 1)  # a point after every block while the federation is built
    with SqliteLedger(path) as led:
        fed = _federation(led)
        at = led.latest().sequence_no
        _point_every(monkeypatch, 10**9)  # none above it
        for n in range(extra):
            txs = [make_transaction(fed.keys[f"client-{i}"], {"n": n}) for i in range(PER_BLOCK)]
            led.append(fed.tx_block(txs))
        return at, led.state()


def _reopen_checks(path: Path, **kwargs: object) -> tuple[FederationState, int]:
    """The state of the file reopened, and the signatures checked to get it."""
    before = verify_cache_stats()["verified"]
    with SqliteLedger(path, **kwargs) as led:  # type: ignore[arg-type]
        state = led.state()
    return state, verify_cache_stats()["verified"] - before


def _set_point(path: Path, text: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (text, resume.META_KEY))


def _point_text(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT value FROM meta WHERE key = ?", (resume.META_KEY,)).fetchone()[0]


def _point(path: Path) -> dict:
    return json.loads(_point_text(path))


def test_point_restores_the_state_replayed_from_genesis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.db"
    at, _ = _chain(path, monkeypatch, extra=0)
    with SqliteLedger(path, read_only=True) as led:
        full_replay = replay(led.blocks(1))
    full = full_replay.state
    assert _point(path)["seq"] == at
    restored, checked = _reopen_checks(path)
    assert checked == 0  # the point is at the head: nothing left to replay
    assert restored == full
    assert federation_digest(restored) == federation_digest(full)
    assert list(restored.identities) == list(full.identities)  # the same iteration order
    assert list(restored.pool) == list(full.pool) == ["client-1", "client-4"]
    assert restored.identities["client-3"].stake != restored.identities["client-0"].stake
    assert restored.identities["relay-0"].role == "relay" and restored.round == 2 and restored.model
    assert restored.previous_model and restored.previous_model != restored.model  # the server momentum's other end
    # deterministic both ways: the full replay encodes to the stored text, which decodes to it
    text = _point_text(path)
    assert resume.encode_point(full_replay) == text
    assert resume.decode_point(text) == (at, full.head, full)
    assert resume.encode_point(Replay(restored, full_replay.head)) == text


def test_reopen_checks_only_the_blocks_above_the_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.db"
    at, state = _chain(path, monkeypatch)
    resumed, checked = _reopen_checks(path)
    assert resumed == state
    assert checked == EXTRA * (PER_BLOCK + 1)  # each block above: its transactions and its producer
    _set_point(path, "{not json")
    full, all_checked = _reopen_checks(path)
    assert full == state
    assert all_checked > at + checked  # every block's producer at least, and every round's certificate


def test_a_point_that_does_not_fit_the_file_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.db"
    _, state = _chain(path, monkeypatch)
    good = _point(path)
    _set_point(path, "{}")
    _, full = _reopen_checks(path)
    bad = [
        {**good, "hash": "ab" * 32, "state": {**good["state"], "head": "ab" * 32}},  # another chain's
        {**good, "seq": 99, "state": {**good["state"], "height": 100}},  # beyond the head
        {**good, "format": "bcsfl-replay0"},  # another version
        {**good, "hash": "ab" * 32},  # its own head and its state's disagree
        {**good, "state": {**good["state"], "identities": [["client-0", 1]]}},
        {**good, "state": {**good["state"], "round": True}},
    ]
    for point in bad:
        _set_point(path, json.dumps(point))
        assert _reopen_checks(path) == (state, full), point
    _set_point(path, json.dumps(good))  # and the good one, put back, is used again
    assert _reopen_checks(path) == (state, EXTRA * (PER_BLOCK + 1))


def test_a_point_whose_block_was_replaced_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain was cut below the point's block and grown again differently: from genesis."""
    path = tmp_path / "l.db"
    at, _ = _chain(path, monkeypatch, extra=0)  # the point at the head, a block pooling two packages
    stale = _point(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM blocks WHERE sequence_no >= ?", (at,))
        conn.execute("DELETE FROM txs WHERE sequence_no >= ?", (at,))
    with SqliteLedger(path) as led:  # no point is saved now (_chain left the thresholds high)
        fed = Federation(led, keys={"client-2": seeded("client-2")})
        led.append(fed.tx_block([fed.tx("client-2", num=7)]))
        assert led.latest().sequence_no == at
        state = led.state()
    assert _point(path) == stale and stale["hash"] != state.head
    _set_point(path, "{}")
    _, full = _reopen_checks(path)
    _set_point(path, json.dumps(stale))
    assert _reopen_checks(path) == (state, full)
    assert not state.pool  # what the stale point held is gone


def test_read_only_and_verify_never_use_the_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A point with a forged state but its block's true hash: a writable open takes it (it is
    the node's own file, and whoever writes it could write the blocks too); an audit does not."""
    path = tmp_path / "l.db"
    _, state = _chain(path, monkeypatch)
    forged = _point(path)
    _set_point(path, "{}")
    _, full = _reopen_checks(path)
    assert forged["state"]["identities"][0][0] == "client-0"
    forged["state"]["identities"][0][3] = 99.0
    _set_point(path, json.dumps(forged))
    trusted, _ = _reopen_checks(path)
    assert trusted.identities["client-0"].stake == 99.0 != state.identities["client-0"].stake
    assert _reopen_checks(path, read_only=True) == (state, full)
    before = verify_cache_stats()["verified"]
    with open_ledger(f"sqlite:///{path}", create=False, read_only=True) as led:  # what `bcsfl ledger verify` opens
        report = verify_chain(led)
        assert report.ok and report.blocks_checked == led.height()
    assert verify_cache_stats()["verified"] - before == full


def test_a_point_is_saved_with_the_block_that_completes_the_threshold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resume, "POINT_TXS", 5)
    monkeypatch.setattr(resume, "POINT_BLOCKS", 10**9)
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)  # the charter, then five enrolments: the point at block 6
        assert _point(path)["seq"] == 6
        for n in range(3):  # two transactions each: the next at 9
            led.append(fed.tx_block([fed.tx(c, n=n) for c in ("client-0", "client-1")]))
        assert _point(path)["seq"] == 9
    with SqliteLedger(path) as led:  # counting goes on from the reopened point
        fed = Federation(led, keys={"client-0": fed.keys["client-0"]})
        for n in range(5):
            led.append(fed.tx_block([fed.tx("client-0", n=n)]))
        assert _point(path)["seq"] == 14
        assert verify_chain(led).ok


def test_a_stored_block_the_rules_refuse_above_the_point_still_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bcsfl_flower.crypto import SigningKey
    from bcsfl_flower.ledger import build_block
    path = tmp_path / "l.db"
    _chain(path, monkeypatch, extra=1)
    key = SigningKey.from_seed(b"stranger")
    with SqliteLedger(path) as led:
        block = build_block(led.latest(), {"transactions": [make_transaction(key, {"num": 1})]}, key)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?)", tuple(block.to_row()))
    with SqliteLedger(path) as led, pytest.raises(LedgerError, match="no enrolled identity holds"):
        led.state()


def test_a_file_without_a_point_gets_one_at_its_next_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written before points existed: replayed in full once, the blocks replayed count."""
    path = tmp_path / "l.db"
    _point_every(monkeypatch, 10**9)
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchall() == []
    _point_every(monkeypatch, 7)
    with SqliteLedger(path) as led:  # charter and five enrolments above genesis, one more here
        fed.ledger = led
        led.append(fed.tx_block([fed.tx("client-0", num=1)]))
        assert _point(path)["seq"] == 7 == led.latest().sequence_no
    assert _reopen_checks(path)[1] == 0
