"""SQLite backend specifics: schema, durability, and several processes on one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ledger_kit import Federation

from bcsfl_flower.ledger import LedgerError, SqliteLedger, open_ledger, verify_chain


def test_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {
            table: [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("blocks", "models")
        }
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        assert triggers.fetchall() == []
        genesis = conn.execute("SELECT * FROM blocks").fetchall()
    finally:
        conn.close()
    assert columns == {
        "blocks": [
            ("sequence_no", "INTEGER"),
            ("hash", "TEXT"),
            ("last_hash", "TEXT"),
            ("timestamp", "REAL"),
            ("data", "TEXT"),
            ("public", "TEXT"),
            ("sign", "TEXT"),
        ],
        "models": [("hash", "TEXT"), ("data", "BLOB")],
    }
    # identities and stakes are replayed from the blocks; txs: committed ids (exactly once)
    assert tables == {"blocks", "models", "txs"}
    assert genesis == [
        (0, "genesis-hash", "", 0.0, '{"chain":"bcsfl","genesis":true}', "", "")
    ]


def test_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        fed.enrol(["relay"], role="relay")
        blocks = [fed.commit_round(rnd, rejected=["client-1"]) for rnd in (1, 2)]  # each on its pool block
        models = led.model_digests()
        state = led.state()
    with open_ledger(f"sqlite:///{path}") as led:
        assert led.height() == 12
        assert led.blocks(8)[1::2] == blocks
        assert led.model_digests() == models
        assert led.state() == state  # replayed from the blocks alone
        assert led.identities()["relay"]["role"] == "relay"
        assert led.state().stakes()["client-1"] == 2.5
        assert verify_chain(led).ok
        fed.ledger = led
        fed.commit_round(3)  # and it keeps growing
    with SqliteLedger(path, create=False) as led:
        assert led.height() == 14


def _run(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


_READER = """
    import sys
    from bcsfl_flower.ledger import open_ledger, verify_chain
    with open_ledger(sys.argv[1], create=False) as led:
        print(led.height(), led.latest().hash, verify_chain(led).ok)
"""

_WRITER = """
    import os, sys
    from bcsfl_flower.crypto import SigningKey
    from bcsfl_flower.ledger import LedgerError, build_block, make_transaction, open_ledger
    key = SigningKey.from_seed(("ledger-kit|" + sys.argv[2]).encode())  # enrolled by the test
    with open_ledger(sys.argv[1]) as led:
        done = 0
        while done < int(sys.argv[3]):
            digest = led.put_model(os.urandom(32))
            tx = make_transaction(key, {"model-params": digest, "num": 1})
            try:
                led.append(build_block(led.latest(), {"transactions": [tx]}, key))
                done += 1
            except LedgerError:
                pass  # another process appended first: retry on the new head
    print("done")
"""


def test_second_process_reads_and_appends(tmp_path: Path, child_env: dict[str, str]) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        fed.commit_round(1)  # its pool block, then the round block
        head = led.latest().hash
        seen = _run(child_env, _READER, str(path))  # while this process holds it open
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.split() == ["9", head, "True"]
        wrote = _run(child_env, _WRITER, str(path), "client-2", "2")
        assert wrote.returncode == 0, wrote.stderr
        assert led.height() == 11  # this connection sees the other process's blocks
        assert led.block(9).last_hash == head
        fed.commit_round(2)  # and its state replays them before the next append
        assert verify_chain(led).ok


def test_other_process_cannot_sneak_in_a_block_the_rules_refuse(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A second process writes an unenrolled key's block straight into the file: this
    process's next state read re-checks it and refuses to build on it."""
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        Federation.start(led)
        sneak = _run(child_env, """
            import sqlite3, sys
            from bcsfl_flower.crypto import SigningKey
            from bcsfl_flower.ledger import SqliteLedger, build_block, make_transaction
            key = SigningKey.from_seed(b"stranger")
            with SqliteLedger(sys.argv[1]) as led:
                block = build_block(led.latest(), {"transactions": [make_transaction(key, {"num": 1})]}, key)
            conn = sqlite3.connect(sys.argv[1])
            conn.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?)", tuple(block.to_row()))
            conn.commit()
        """, str(path))
        assert sneak.returncode == 0, sneak.stderr
        with pytest.raises(LedgerError, match="no enrolled identity holds"):
            led.state()
        assert not verify_chain(led).ok


def test_concurrent_processes_never_fork(tmp_path: Path, child_env: dict[str, str]) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        Federation.start(led, clients=0).enrol(["writer-0", "writer-1"])
    code = textwrap.dedent(_WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), f"writer-{i}", "25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    with SqliteLedger(path) as led:
        assert led.height() == 54
        report = verify_chain(led)
        assert report.ok and report.models_checked >= 50  # losers of a race leave extra models
        producers = {b.public for b in led.blocks(4)}
        assert len(producers) == 2


def test_create_false_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteLedger(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="not a ledger"):
        SqliteLedger(foreign, create=False)
