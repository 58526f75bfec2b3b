"""``python -m bcsfl_flower.ledger.cli`` and ``register()``: exit codes and output.

``chain_file`` (conftest): 14 blocks (charter, five enrolments, three rounds each on
its pool block, one transaction block) and 20 stored models (three global models, 15
pooled client updates, the transaction's update, an unreferenced one).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ledger_kit import seeded

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import SqliteLedger, Transaction, verify_chain
from bcsfl_flower.ledger import cli as ledger_cli
from bcsfl_flower.ledger.charter_file import read_charter

AUTHORITY = seeded("authority")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bcsfl_flower.ledger.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ledger_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _head(path: Path) -> str:
    with SqliteLedger(path, read_only=True) as led:
        return led.latest().hash


def test_verify_ok_names_its_anchors_and_writes_nothing(chain_file: Path, child_env: dict[str, str]) -> None:
    before = (chain_file.read_bytes(), chain_file.stat().st_mtime_ns)
    head = _head(chain_file)
    for target in (str(chain_file), f"sqlite:///{chain_file}"):
        result = _cli(child_env, "verify", target)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (f"OK: 14 blocks, 20 models verified; head {head}; "
                                         f"enrolment authority {AUTHORITY.public_hex[:16]}")
    assert (chain_file.read_bytes(), chain_file.stat().st_mtime_ns) == before


def test_verify_anchor_flags(chain_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, path = _head(chain_file), str(chain_file)
    key_file = tmp_path / "enrolment.key"
    key_file.write_bytes(AUTHORITY.private_bytes())
    pub_file = tmp_path / "enrolment.pub"
    pub_file.write_text(AUTHORITY.public_hex + "\n")
    for ok_args in (["--authority", AUTHORITY.public_hex], ["--authority-key", str(key_file)],
                    ["--authority-key", str(pub_file)], ["--head", head], ["--height", "14"],
                    ["--authority", AUTHORITY.public_hex, "--head", head, "--height", "14"]):
        code, out, _ = _run(capsys, "verify", path, *ok_args)
        assert code == 0 and out.startswith("OK: 14 blocks"), (ok_args, out)
    other = seeded("someone else").public_hex
    code, out, _ = _run(capsys, "verify", path, "--authority", other)
    assert code == 1 and out.startswith("FAILED at block 1: the charter's enrolment key")
    code, out, _ = _run(capsys, "verify", path, "--head", "ab" * 32)
    assert code == 1 and out.strip() == f"FAILED: truncated or rewritten: head {'ab' * 32} not found"
    code, out, _ = _run(capsys, "verify", path, "--height", "15")
    assert code == 1 and out.strip() == "FAILED: truncated: height 14 < 15"
    code, _, err = _run(capsys, "verify", path, "--authority-key", str(tmp_path / "absent.key"))
    assert code == 2 and "--authority-key" in err
    with pytest.raises(SystemExit):  # one authority flag at a time
        ledger_cli.main(["verify", path, "--authority", other, "--authority-key", str(key_file)])


def test_verify_tampered_names_the_block(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(chain_file, isolation_level=None)
    (sign,) = conn.execute("SELECT sign FROM blocks WHERE sequence_no = 10").fetchone()
    conn.execute(
        "UPDATE blocks SET sign = ? WHERE sequence_no = 10",
        (sign[:10] + ("0" if sign[10] != "0" else "1") + sign[11:],),
    )
    conn.close()
    code, out, _ = _run(capsys, "verify", str(chain_file))
    assert code == 1
    assert out.startswith("FAILED at block 10: ")
    assert "signature" in out


def test_verify_missing_or_empty_file_is_an_error_and_writes_nothing(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    missing = tmp_path / "nope.db"
    result = _cli(child_env, "verify", str(missing))
    assert result.returncode == 2
    assert "cannot open ledger" in result.stderr
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in ("verify", "show"):
        result = _cli(child_env, command, str(empty))
        assert result.returncode == 2 and "not a ledger" in result.stderr
    assert empty.stat().st_size == 0


def test_show_warns_when_the_chain_does_not_verify_and_writes_nothing(
    chain_file: Path, child_env: dict[str, str]
) -> None:
    conn = sqlite3.connect(chain_file, isolation_level=None)
    conn.execute("UPDATE blocks SET timestamp = timestamp + 1 WHERE sequence_no = 4")
    conn.close()
    before = (chain_file.read_bytes(), chain_file.stat().st_mtime_ns)
    result = _cli(child_env, "show", str(chain_file))
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "(14 of 14 blocks shown)"
    warning = result.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("WARNING: this chain does not verify (FAILED at block 4")
    assert (chain_file.read_bytes(), chain_file.stat().st_mtime_ns) == before
    clean = _cli(child_env, "show", str(chain_file), "--limit", "1")  # the warning is about the chain, not the rows
    assert clean.returncode == 0 and clean.stderr.startswith("WARNING:")


def test_verify_and_show_name_what_is_wrong_with_a_file(tmp_path: Path, child_env: dict[str, str]) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    for target, says in (("missing.db", "no such ledger file"), ("notes.txt", "not a ledger (not a SQLite database)"),
                         (".", "a folder, not a ledger file")):
        for command in ("verify", "show"):
            result = subprocess.run([sys.executable, "-m", "bcsfl_flower.cli", "ledger", command, target],
                                    capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=120)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.splitlines() == [f"ERROR: cannot open ledger {target}: {says}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_verify_a_chain_without_charter_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SqliteLedger(tmp_path / "bare.db").close()
    code, out, _ = _run(capsys, "verify", str(tmp_path / "bare.db"))
    assert code == 1 and out.strip() == "FAILED: no charter: the chain has no authority"


def test_show_table(chain_file: Path, child_env: dict[str, str]) -> None:
    result = _cli(child_env, "show", str(chain_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header == [
        "seq", "time", "hash", "lastHash", "producer", "#tx", "round",
        "accepted", "rejected", "model",
    ]
    rows = [line.split() for line in lines[2:-1]]
    assert [r[0] for r in rows] == [str(i) for i in range(14)]
    assert rows[0][1].startswith("1970-01-01T00:00:00")
    assert rows[8][3] == rows[7][2]  # lastHash prefix == previous hash prefix
    assert rows[2][5:10] == ["1", "-", "-", "-", "-"]  # an enrolment: one transaction
    assert rows[9][5:10] == ["1", "-", "-", "-", "-"]  # round 2's pool: one transaction, the five packages
    assert rows[10][5:9] == ["0", "2", "4", "1"]  # round 2: four kept, client-3 rejected
    assert len(rows[10][9]) == 12
    assert lines[-1] == "(14 of 14 blocks shown)"

    limited = _cli(child_env, "show", str(chain_file), "--limit", "1")
    assert limited.returncode == 0
    body = limited.stdout.splitlines()
    assert len(body) == 4 and body[2].split()[0] == "13"


def test_register_into_a_top_level_parser(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bcsfl")
    sub = parser.add_subparsers(dest="command")
    ledger_cli.register(sub)
    args = parser.parse_args(["ledger", "verify", str(chain_file), "--height", "3"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("OK: 14 blocks, 20 models verified; head ")
    args = parser.parse_args(["ledger", "show", str(chain_file), "--limit", "2"])
    assert args.func(args) == 0
    assert "(2 of 14 blocks shown)" in capsys.readouterr().out


def test_init_enrol_and_verify_a_new_federation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file, url = tmp_path / "keys" / "enrolment.key", f"sqlite:///{tmp_path / 'fed.db'}"
    code, out, err = _run(capsys, "init", "--ledger", url, "--enrolment-key", str(key_file),
                          "--committee-size", "5", "--max-model-bytes", "1000", "--out",
                          str(tmp_path / "charter.json"))
    assert code == 0, err
    authority = SigningKey.load_or_create(key_file)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert authority.public_hex in out and "charter installed" in out
    charter = read_charter(tmp_path / "charter.json")
    assert charter.data["charter"]["committee_size"] == 5
    # Again with the same key: nothing to do; with another key: refused.
    assert _run(capsys, "init", "--ledger", url, "--enrolment-key", str(key_file))[0] == 0
    code, _, err = _run(capsys, "init", "--ledger", url, "--enrolment-key", str(tmp_path / "other.key"))
    assert code == 1 and "another enrolment authority" in err
    code, _, err = _run(capsys, "init", "--ledger", f"sqlite:///{tmp_path / 'x.db'}", "--enrolment-key",
                        str(key_file), "--committee-size", "3")
    assert code == 2 and "committee_size" in err

    alice = SigningKey.generate()
    code, out, err = _run(capsys, "enrol", "--enrolment-key", str(key_file), "--client-id", "alice",
                          "--public-key", alice.public_hex, "--ledger", url)
    assert code == 0 and "enrolled 'alice'" in out, err
    ticket = tmp_path / "bob.json"
    bob = SigningKey.generate()
    code, out, _ = _run(capsys, "enrol", "--enrolment-key", str(key_file), "--client-id", "bob",
                        "--public-key", bob.public_hex, "--role", "relay", "--out", str(ticket))
    assert code == 0 and str(ticket) in out
    tx = Transaction.from_json(json.loads(ticket.read_text()))
    assert tx.public == authority.public_hex and tx.data["enrol"]["role"] == "relay"
    assert _run(capsys, "enrol", "--ticket", str(ticket), "--ledger", url)[0] == 0
    # A ticket signed by another key is refused by the ledger, with the reason.
    forged = tmp_path / "mallory.json"
    assert _run(capsys, "enrol", "--enrolment-key", str(tmp_path / "other.key"), "--client-id", "mallory",
                "--public-key", bob.public_hex, "--out", str(forged))[0] == 0
    code, _, err = _run(capsys, "enrol", "--ticket", str(forged), "--ledger", url)
    assert code == 1 and "not signed by the enrolment authority" in err
    code, _, err = _run(capsys, "enrol", "--enrolment-key", str(tmp_path / "absent.key"), "--client-id", "c",
                        "--public-key", bob.public_hex, "--ledger", url)
    assert code == 2 and not (tmp_path / "absent.key").exists()
    assert _run(capsys, "enrol", "--enrolment-key", str(key_file), "--client-id", "c", "--public-key", "xyz",
                "--ledger", url)[0] == 2

    with SqliteLedger(tmp_path / "fed.db", read_only=True) as led:
        assert set(led.identities()) == {"alice", "bob"}
        assert verify_chain(led, authority=authority.public_hex, height=4).ok
    code, out, _ = _run(capsys, "verify", url, "--authority-key", str(key_file))
    assert code == 0 and f"enrolment authority {authority.public_hex[:16]}" in out


def test_init_refuses_a_cluster_url_and_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = str(tmp_path / "k.key")
    code, _, err = _run(capsys, "init", "--ledger", "http://127.0.0.1:9", "--enrolment-key", key)
    assert code == 2 and "ledger up" in err
    assert _run(capsys, "init", "--enrolment-key", key)[0] == 2
    assert not os.path.exists(key)
