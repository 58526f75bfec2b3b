"""``python -m bcsfl_flower.ledger.cli`` and ``register()``: exit codes and output."""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bcsfl_flower.ledger import Block, SqliteLedger
from bcsfl_flower.ledger import cli as ledger_cli

RoundFactory = Callable[..., Block]


@pytest.fixture
def chain_file(tmp_path: Path, make_round: RoundFactory) -> Path:
    """A closed SQLite ledger with two round blocks."""
    path = tmp_path / "chain.db"
    with SqliteLedger(path) as led:
        for rnd in (1, 2):
            led.append(make_round(led, rnd))
    return path


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bcsfl_flower.ledger.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_verify_ok(chain_file: Path, child_env: dict[str, str]) -> None:
    for target in (str(chain_file), f"sqlite:///{chain_file}"):
        result = _cli(child_env, "verify", target)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "OK: 3 blocks, 8 models verified"


def test_verify_tampered_names_the_block(chain_file: Path, child_env: dict[str, str]) -> None:
    conn = sqlite3.connect(chain_file, isolation_level=None)
    (sign,) = conn.execute("SELECT sign FROM blocks WHERE sequence_no = 2").fetchone()
    conn.execute(
        "UPDATE blocks SET sign = ? WHERE sequence_no = 2",
        (sign[:10] + ("0" if sign[10] != "0" else "1") + sign[11:],),
    )
    conn.close()
    result = _cli(child_env, "verify", str(chain_file))
    assert result.returncode == 1
    assert result.stdout.startswith("FAILED at block 2: ")
    assert "signature" in result.stdout


def test_verify_missing_file_is_an_error_and_creates_nothing(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    missing = tmp_path / "nope.db"
    result = _cli(child_env, "verify", str(missing))
    assert result.returncode == 2
    assert "cannot open ledger" in result.stderr
    assert not missing.exists()


def test_show_table(chain_file: Path, child_env: dict[str, str]) -> None:
    result = _cli(child_env, "show", str(chain_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header == [
        "seq", "time", "hash", "lastHash", "producer", "#tx", "round",
        "accepted", "rejected", "model",
    ]
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert rows[0][1].startswith("1970-01-01T00:00:00")
    assert rows[2][3] == rows[1][2]  # lastHash prefix == previous hash prefix
    assert rows[2][5:9] == ["3", "2", "2", "1"]  # #tx, round, accepted, rejected
    assert len(rows[2][9]) == 12
    assert lines[-1] == "(3 of 3 blocks shown)"

    limited = _cli(child_env, "show", str(chain_file), "--limit", "1")
    assert limited.returncode == 0
    body = limited.stdout.splitlines()
    assert len(body) == 4 and body[2].split()[0] == "2"


def test_register_into_a_top_level_parser(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bcsfl")
    sub = parser.add_subparsers(dest="command")
    ledger_cli.register(sub)
    args = parser.parse_args(["ledger", "verify", str(chain_file)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == "OK: 3 blocks, 8 models verified"
    args = parser.parse_args(["ledger", "show", str(chain_file), "--limit", "2"])
    assert args.func(args) == 0
    assert "(2 of 3 blocks shown)" in capsys.readouterr().out
