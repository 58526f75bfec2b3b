"""Tamper evidence: edits made directly to the SQLite file must fail ``verify_chain``.

The chain (``chain_file``): genesis, the charter (1), five enrolments (2-6), rounds 1
and 2 each on its pool block (pool 7, round 8; pool 9, round 10), a transaction block
(11) and round 3 on its pool (pool 12, round 13). Edits range from one changed
byte to a whole history re-signed under a fresh authority; anchors held outside the
file (``authority``, ``head``, ``height``) catch what a consistent rewrite hides.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.crypto import sha256_hex
from bcsfl_flower.ledger import Block, LedgerError, MemoryLedger, SqliteLedger, verify_chain
from bcsfl_flower.ledger.block import BlockRow

TEXT_COLUMNS = ("hash", "last_hash", "data", "public", "sign")
NEWEST = 13
HEIGHT = 14


@pytest.fixture
def raw(chain_file: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the ledger file, in autocommit mode."""
    conn = sqlite3.connect(chain_file, isolation_level=None)
    yield conn
    conn.close()


def _verify(path: Path, **anchors: object) -> tuple[bool, int | None, str]:
    with SqliteLedger(path, read_only=True) as led:
        report = verify_chain(led, **anchors)  # type: ignore[arg-type]
    return report.ok, report.first_bad_block, report.reason


def _variants(char: str) -> list[str]:
    """Different one-character replacements, including a case flip for hex letters."""
    out = [chr(ord(char) ^ 1)]
    if char.upper() != char:
        out.append(char.upper())
    return out


def test_untouched_chain_verifies_with_its_anchors(chain_file: Path) -> None:
    with SqliteLedger(chain_file, read_only=True) as led:
        head = led.latest().hash
        report = verify_chain(led, authority=seeded("authority").public_hex, head=head, height=HEIGHT)
        assert report.ok and report.blocks_checked == HEIGHT and report.models_checked == 20
        assert report.summary() == (f"OK: {HEIGHT} blocks, 20 models verified; head {head}; "
                                    f"enrolment authority {seeded('authority').public_hex[:16]}")
        assert verify_chain(led, head=led.block(7).hash).ok  # an older anchor is still in the chain


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_one_changed_byte_in_newest_block_is_detected(
    chain_file: Path, raw: sqlite3.Connection, column: str
) -> None:
    (original,) = raw.execute(
        f"SELECT {column} FROM blocks WHERE sequence_no = ?", (NEWEST,)
    ).fetchone()
    step = max(1, len(original) // 60)
    positions = sorted({0, len(original) - 1, *range(0, len(original), step)})
    with SqliteLedger(chain_file, read_only=True) as led:
        for pos in positions:
            for new in _variants(original[pos]):
                tampered = original[:pos] + new + original[pos + 1 :]
                raw.execute(
                    f"UPDATE blocks SET {column} = ? WHERE sequence_no = ?",
                    (tampered, NEWEST),
                )
                report = verify_chain(led)
                assert not report.ok, (column, pos, new)
                assert report.first_bad_block == NEWEST, (column, pos, new, report)
        raw.execute(
            f"UPDATE blocks SET {column} = ? WHERE sequence_no = ?", (original, NEWEST)
        )
        assert verify_chain(led).ok


@pytest.mark.parametrize(
    ("sql", "bad_block"),
    [
        ("UPDATE blocks SET timestamp = timestamp + 1e-6 WHERE sequence_no = 13", 13),
        ("UPDATE blocks SET timestamp = 'yesterday' WHERE sequence_no = 13", 13),
        ("UPDATE blocks SET sequence_no = 17 WHERE sequence_no = 13", 13),
        ("UPDATE blocks SET data = X'7b7d' WHERE sequence_no = 2", 2),
        ("DELETE FROM blocks WHERE sequence_no = 2", 2),  # an enrolment removed
        ("DELETE FROM blocks WHERE sequence_no = 1", 1),  # the charter removed
        ("DELETE FROM blocks WHERE sequence_no = 0", 0),
        ("UPDATE blocks SET data = '{\"chain\":\"bcsfl\",\"genesis\":1}' WHERE sequence_no = 0", 0),
    ],
)
def test_row_edits_are_detected(
    chain_file: Path, raw: sqlite3.Connection, sql: str, bad_block: int
) -> None:
    raw.execute(sql)
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == bad_block, reason


def test_reordered_blocks_are_detected(chain_file: Path, raw: sqlite3.Connection) -> None:
    raw.execute("BEGIN")
    raw.execute("UPDATE blocks SET sequence_no = -1 WHERE sequence_no = 7")
    raw.execute("UPDATE blocks SET sequence_no = 7 WHERE sequence_no = 8")
    raw.execute("UPDATE blocks SET sequence_no = 8 WHERE sequence_no = -1")
    raw.execute("COMMIT")
    ok, first_bad, _ = _verify(chain_file)
    assert not ok and first_bad == 7


def _rewrite(raw: sqlite3.Connection, block: Block) -> None:
    row = block.to_row()
    raw.execute("UPDATE blocks SET hash = ?, data = ?, public = ?, sign = ? WHERE sequence_no = ?",
                (row.hash, row.data, row.public, row.sign, block.sequence_no))


def test_resigned_round_with_other_stakes_is_detected(chain_file: Path, raw: sqlite3.Connection) -> None:
    """Someone with write access edits round 3's stake book and re-signs the block with a key of their own."""
    with SqliteLedger(chain_file, read_only=True) as led:
        block = led.block(NEWEST)
    mallory = seeded("mallory")
    data = {**block.data, "stakes": {**block.data["stakes"], "client-3": 100.0}}
    forged = dataclasses.replace(block, data=data, public=mallory.public_hex)
    digest = forged.expected_hash()
    forged = dataclasses.replace(forged, hash=digest, sign=mallory.sign(bytes.fromhex(digest)).hex())
    raw.execute("UPDATE blocks SET last_hash = ? WHERE sequence_no = ?", (block.last_hash, NEWEST))
    _rewrite(raw, forged)
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == NEWEST and "stakes do not follow" in reason


def test_history_resigned_under_a_fresh_authority_fails_only_against_the_authority(tmp_path: Path) -> None:
    """A consistent forgery (new charter, new keys, rounds certified by the forger's committee)
    verifies on its own; the expected authority, held outside the file, exposes it."""
    real = seeded("authority").public_hex
    forged = tmp_path / "forged.db"
    with SqliteLedger(forged) as led:
        forger = Federation.start(led, authority=seeded("forger"))
        forger.commit_round(1)
    ok, _, _ = _verify(forged)
    assert ok
    ok, first_bad, reason = _verify(forged, authority=real)
    assert not ok and first_bad == 1 and "enrolment key" in reason and real[:16] in reason
    assert _verify(forged, authority=seeded("forger").public_hex)[0]


def test_truncation_is_detected_by_head_and_height(chain_file: Path, raw: sqlite3.Connection) -> None:
    with SqliteLedger(chain_file, read_only=True) as led:
        head = led.latest().hash
    raw.execute("DELETE FROM blocks WHERE sequence_no >= 9")
    assert _verify(chain_file)[0]  # a prefix of a valid chain is consistent on its own
    ok, first_bad, reason = _verify(chain_file, head=head)
    assert not ok and first_bad is None and reason == f"truncated or rewritten: head {head} not found"
    ok, _, reason = _verify(chain_file, height=HEIGHT)
    assert not ok and reason == f"truncated: height 9 < {HEIGHT}"


def _referenced(path: Path, seq: int) -> str:
    with SqliteLedger(path, read_only=True) as led:
        return str(led.block(seq).data["model-params"])


@pytest.mark.parametrize("seq", [8, 10, 13])  # rounds 1, 2 and 3
def test_stored_global_model_differing_from_the_signed_hash_names_the_block(
    chain_file: Path, raw: sqlite3.Connection, seq: int
) -> None:
    digest = _referenced(chain_file, seq)  # what the round's certificate signs
    (blob,) = raw.execute("SELECT data FROM models WHERE hash = ?", (digest,)).fetchone()
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    raw.execute("UPDATE models SET data = ? WHERE hash = ?", (bytes(tampered), digest))
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == seq and digest in reason
    with SqliteLedger(chain_file, read_only=True) as led, pytest.raises(LedgerError, match=digest):
        led.get_model(digest)  # reads are integrity-checked too


def test_renamed_or_deleted_model_is_missing(chain_file: Path, raw: sqlite3.Connection) -> None:
    digest = _referenced(chain_file, 8)
    raw.execute("UPDATE models SET hash = ? WHERE hash = ?", (digest[:-1] + "0", digest))
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == 8 and "missing" in reason


def test_changed_unreferenced_model_is_reported_by_digest(
    chain_file: Path, raw: sqlite3.Connection
) -> None:
    digest = sha256_hex(b"an unreferenced model")
    raw.execute("UPDATE models SET data = ? WHERE hash = ?", (b"an unreferenced modeL", digest))
    with SqliteLedger(chain_file, read_only=True) as led:
        report = verify_chain(led)
    assert not report.ok and report.first_bad_block is None
    assert digest in report.reason and report.blocks_checked == HEIGHT
    assert report.summary().startswith("FAILED: ")


def test_copy_of_a_verified_file_verifies(chain_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(chain_file, copy)
    ok, _, _ = _verify(copy)
    assert ok


def test_read_only_verify_leaves_the_file_unchanged(chain_file: Path) -> None:
    before = chain_file.read_bytes()
    with SqliteLedger(chain_file, read_only=True) as led:
        assert verify_chain(led).ok
        with pytest.raises(sqlite3.OperationalError):
            led.put_model(b"a write through a read-only handle")
    assert chain_file.read_bytes() == before


def test_memory_backend_storage_edits_are_detected() -> None:
    led = MemoryLedger()
    fed = Federation.start(led, clients=4)
    fed.commit_round(1)
    assert verify_chain(led).ok
    seq = led.height() - 1
    row = led._rows[seq]  # the backend's storage, edited as an attacker would
    led._rows[seq] = BlockRow(*row[:4], row.data.replace('"round":1', '"round":7'), *row[5:])
    report = verify_chain(led)
    assert not report.ok and report.first_bad_block == seq
    assert report.summary().startswith(f"FAILED at block {seq}: ")
