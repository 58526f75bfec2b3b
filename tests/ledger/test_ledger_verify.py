"""Tamper evidence: edits made directly to the SQLite file must fail ``verify_chain``."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import Block, LedgerError, MemoryLedger, SqliteLedger, verify_chain
from bcsfl_flower.ledger.block import BlockRow

RoundFactory = Callable[..., Block]
TEXT_COLUMNS = ("hash", "last_hash", "data", "public", "sign")
NEWEST = 3


@pytest.fixture
def chain_file(tmp_path: Path, make_round: RoundFactory) -> Path:
    """A closed SQLite ledger with three round blocks and one unreferenced model."""
    path = tmp_path / "chain.db"
    with SqliteLedger(path) as led:
        for rnd in (1, 2, 3):
            led.append(make_round(led, rnd))
        led.put_model(b"an unreferenced model")
        assert verify_chain(led).ok
    return path


@pytest.fixture
def raw(chain_file: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the ledger file, in autocommit mode."""
    conn = sqlite3.connect(chain_file, isolation_level=None)
    yield conn
    conn.close()


def _verify(path: Path) -> tuple[bool, int | None, str]:
    with SqliteLedger(path, create=False) as led:
        report = verify_chain(led)
    return report.ok, report.first_bad_block, report.reason


def _variants(char: str) -> list[str]:
    """Different one-character replacements, including a case flip for hex letters."""
    out = [chr(ord(char) ^ 1)]
    if char.upper() != char:
        out.append(char.upper())
    return out


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_one_changed_byte_in_newest_block_is_detected(
    chain_file: Path, raw: sqlite3.Connection, column: str
) -> None:
    (original,) = raw.execute(
        f"SELECT {column} FROM blocks WHERE sequence_no = ?", (NEWEST,)
    ).fetchone()
    positions = sorted({0, len(original) - 1, *range(0, len(original), 5)})
    with SqliteLedger(chain_file, create=False) as led:
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
        ("UPDATE blocks SET timestamp = timestamp + 1e-6 WHERE sequence_no = 3", 3),
        ("UPDATE blocks SET timestamp = 'yesterday' WHERE sequence_no = 3", 3),
        ("UPDATE blocks SET sequence_no = 7 WHERE sequence_no = 3", 3),
        ("UPDATE blocks SET data = X'7b7d' WHERE sequence_no = 2", 2),
        ("DELETE FROM blocks WHERE sequence_no = 2", 2),
        ("DELETE FROM blocks WHERE sequence_no = 0", 0),
        ("UPDATE blocks SET data = '{\"chain\":\"bcsfl\",\"genesis\":1}' WHERE sequence_no = 0", 0),
        ("UPDATE identities SET public_key = '" + "ab" * 32 + "' WHERE client_id = 'client-1'", 1),
        ("DELETE FROM identities WHERE client_id = 'client-2'", 1),
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
    raw.execute("UPDATE blocks SET sequence_no = -1 WHERE sequence_no = 1")
    raw.execute("UPDATE blocks SET sequence_no = 1 WHERE sequence_no = 2")
    raw.execute("UPDATE blocks SET sequence_no = 2 WHERE sequence_no = -1")
    raw.execute("COMMIT")
    ok, first_bad, _ = _verify(chain_file)
    assert not ok and first_bad == 1


def _referenced(path: Path, seq: int) -> str:
    with SqliteLedger(path, create=False) as led:
        return str(led.block(seq).data["model-params"])


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_changed_model_blob_names_the_referencing_block(
    chain_file: Path, raw: sqlite3.Connection, seq: int
) -> None:
    digest = _referenced(chain_file, seq)
    (blob,) = raw.execute("SELECT data FROM models WHERE hash = ?", (digest,)).fetchone()
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    raw.execute("UPDATE models SET data = ? WHERE hash = ?", (bytes(tampered), digest))
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == seq and digest in reason
    with SqliteLedger(chain_file, create=False) as led, pytest.raises(LedgerError, match=digest):
        led.get_model(digest)  # reads are integrity-checked too


def test_renamed_or_deleted_model_is_missing(chain_file: Path, raw: sqlite3.Connection) -> None:
    digest = _referenced(chain_file, 2)
    raw.execute("UPDATE models SET hash = ? WHERE hash = ?", (digest[:-1] + "0", digest))
    ok, first_bad, reason = _verify(chain_file)
    assert not ok and first_bad == 2 and "missing" in reason


def test_changed_unreferenced_model_is_reported_by_digest(
    chain_file: Path, raw: sqlite3.Connection
) -> None:
    digest = sha256_hex(b"an unreferenced model")
    raw.execute("UPDATE models SET data = ? WHERE hash = ?", (b"an unreferenced modeL", digest))
    with SqliteLedger(chain_file, create=False) as led:
        report = verify_chain(led)
    assert not report.ok and report.first_bad_block is None
    assert digest in report.reason and report.blocks_checked == 4
    assert report.summary().startswith("FAILED: ")


def test_copy_of_a_verified_file_verifies(chain_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(chain_file, copy)
    ok, _, _ = _verify(copy)
    assert ok


def test_memory_backend_storage_edits_are_detected(
    make_round: RoundFactory, producer: SigningKey
) -> None:
    led = MemoryLedger()
    for rnd in (1, 2):
        led.append(make_round(led, rnd))
    assert verify_chain(led).ok
    row = led._rows[1]  # the backend's storage, edited as an attacker would
    led._rows[1] = BlockRow(*row[:4], row.data.replace('"round":1', '"round":7'), *row[5:])
    report = verify_chain(led)
    assert not report.ok and report.first_bad_block == 1
    assert report.summary().startswith("FAILED at block 1: ")
