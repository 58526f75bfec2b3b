"""A user's first hour with ``bcsfl``: bad input refused in one line before anything starts,
reruns refused without ``--resume``, ``--help`` that shows its defaults, and Ctrl-C that
exits 130 leaving a ledger that verifies. Everything runs the real CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledger_kit import Federation

from bcsfl_flower.ledger import SqliteLedger
from bcsfl_flower.settings import ATTACKS, RunSettings
from bcsfl_flower.simulate import settings_problems

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def bcsfl(*args: str, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "bcsfl_flower.cli", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=ENV)
    return res, time.monotonic() - started


def assert_one_line_error(res: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    return lines[0]


def _chain(path: Path, rounds: int = 1) -> None:
    """A ledger holding a chain: genesis, the charter, five enrolments and ``rounds`` certified rounds
    (each a pool block and a round block; no Flower run needed)."""
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        for r in range(1, rounds + 1):
            fed.commit_round(r)


# label, arguments (with {tmp} for the test's folder), what the one line must say
BAD = [
    ("no clients", ["--num-clients", "0"], "--num-clients must be at least 1"),
    ("fraction above 1", ["--malicious-fraction", "1.5", "--attack", "sign-flip"],
     "--malicious-fraction must be in [0, 1)"),
    ("no rounds", ["--rounds", "0"], "--rounds must be at least 1"),
    ("mnist, empty data dir", ["--dataset", "mnist", "--data-dir", "{tmp}/empty"], "not found in {tmp}/empty (nor"),
    ("mnist, missing data dir", ["--dataset", "mnist", "--data-dir", "{tmp}/nothing"],
     "{tmp}/nothing (no such folder)"),
    ("cifar10, empty data dir", ["--dataset", "cifar10", "--data-dir", "{tmp}/empty"], "cifar10: cifar-10-batches-py/"),
    ("alpha 0", ["--dirichlet-alpha", "0"], "--dirichlet-alpha must be greater than 0"),
    ("bogus ledger scheme", ["--ledger", "bogus://x"], "has an unknown scheme"),
    ("ledger is a text file", ["--ledger", "sqlite:///{tmp}/notes.txt"], "is not a ledger (not a SQLite database)"),
    ("out is a file", ["--out", "{tmp}/notes.txt"], "is a file, not a folder"),
    ("BCS-FL with 3 clients", ["--num-clients", "3"], "--num-clients must be at least 4 for BCS-FL"),
    ("committee of 3", ["--committee-size", "3"], "--committee-size must be at least 4"),
    ("prune 1", ["--prune", "1"], "--prune must be in [0, 1)"),
    ("not a number", ["--rounds", "many"], "argument --rounds: invalid int value"),
]


@pytest.mark.parametrize("label,args,says", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_in_one_line_before_anything_starts(tmp_path: Path, label: str, args: list[str],
                                                                  says: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    res, seconds = bcsfl("simulate", *args, cwd=tmp_path)
    line = assert_one_line_error(res, "bcsfl simulate: ")
    assert says.replace("{tmp}", str(tmp_path)) in line, line
    assert seconds < 20, f"{seconds:.1f} s: something started before the check"
    assert not (tmp_path / "run").exists(), "a refused run created its output folder"
    assert (tmp_path / "notes.txt").read_text() == "hello\n"


def test_simulate_imports_neither_torch_nor_flower_to_refuse(tmp_path: Path) -> None:
    code = ("import sys\nfrom bcsfl_flower.cli import main\ncode = main(sys.argv[1:])\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'ray'})\n"
            "assert not heavy, heavy\nsys.exit(code)\n")
    res = subprocess.run([sys.executable, "-c", code, "simulate", "--rounds", "0", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert_one_line_error(res, "bcsfl simulate: --rounds")


def test_a_rerun_into_a_folder_holding_a_chain_needs_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _chain(out / "ledger.db")
    before = (out / "ledger.db").read_bytes()
    res, _ = bcsfl("simulate", "--rounds", "1", "--out", str(out), cwd=tmp_path)
    line = assert_one_line_error(res, "bcsfl simulate: ")
    assert line == (f"bcsfl simulate: {out} already holds a chain of 9 blocks (round 1): pass --resume to "
                    "continue from its head, or choose a new --out")
    assert (out / "ledger.db").read_bytes() == before
    other = tmp_path / "chain.db"  # an explicit --ledger: the advice names --ledger
    _chain(other)
    res, _ = bcsfl("simulate", "--ledger", str(other), "--out", str(tmp_path / "fresh"), cwd=tmp_path)
    assert assert_one_line_error(res, "bcsfl simulate: ").endswith("or choose a new --ledger")


def test_a_founded_federation_without_rounds_is_not_a_rerun(tmp_path: Path) -> None:
    """``ledger init`` and ``enrol`` leave a charter and enrolments: the first run on them needs no --resume."""
    from bcsfl_flower.settings import RunSettings
    from bcsfl_flower.simulate import settings_problems

    _chain(tmp_path / "fed.db", rounds=0)
    s = RunSettings(num_clients=5, bcsfl_ledger=f"sqlite:///{tmp_path / 'fed.db'}", out=str(tmp_path / "out"))
    assert settings_problems(s) == []
    _chain(tmp_path / "ran.db", rounds=1)
    s = RunSettings(num_clients=5, bcsfl_ledger=f"sqlite:///{tmp_path / 'ran.db'}", out=str(tmp_path / "out"))
    assert any("already holds a chain of 9 blocks (round 1)" in p for p in settings_problems(s))


def test_resume_passes_the_chain_check(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _chain(out / "ledger.db")
    settings = RunSettings(num_clients=5, out=str(out), bcsfl_ledger=f"sqlite:///{out / 'ledger.db'}")
    assert any("--resume" in p for p in settings_problems(settings, names={"resume": "--resume"}))
    from dataclasses import replace

    assert settings_problems(replace(settings, resume=True)) == []
    # a ledger with only its genesis block is no chain: no --resume needed
    SqliteLedger(tmp_path / "fresh.db").close()
    assert settings_problems(replace(settings, bcsfl_ledger=f"sqlite:///{tmp_path / 'fresh.db'}")) == []


def test_resume_is_a_run_config_key() -> None:
    assert RunSettings.from_mapping({"resume": True}).resume is True
    assert RunSettings.from_mapping({"resume": "false"}).resume is False
    assert RunSettings.from_mapping({"resume": "true"}).resume is True
    assert RunSettings().to_mapping()["resume"] is False
    with pytest.raises(ValueError, match="resume"):
        RunSettings.from_mapping({"resume": "maybe"})


def test_problems_name_run_config_keys_by_default() -> None:
    assert RunSettings().problems() == []
    assert RunSettings(num_server_rounds=0, batch_size=0).problems() == [
        "num-server-rounds must be at least 1 (got 0)", "batch-size must be at least 1 (got 0)"]
    assert RunSettings(dataset="imagenet").problems()[0].startswith("dataset must be one of digits, mnist")
    wrong = RunSettings(learning_rate="fast")  # type: ignore[arg-type]
    assert wrong.problems() == ["learning-rate must be float (got 'fast')"]


def test_the_attack_names_are_the_attacks_module_s() -> None:
    from bcsfl_flower.client import attacks

    assert ATTACKS == attacks.ATTACKS


def test_help_shows_every_default_and_the_ledger_urls(tmp_path: Path) -> None:
    res, _ = bcsfl("simulate", "--help", cwd=tmp_path)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for expected in ("(default: 10)", "(default: 5)", "(default: 0.05)", "(default: digits)", "(default: ray)",
                     "(default: bcsfl-out)", "memory", "sqlite:///path", "http://host:port", "--resume", "--quiet"):
        assert expected in text, expected
    assert "Run one Flower simulation" in text
    for command in (["ledger", "verify"], ["ledger", "show"], ["ledger", "up"], ["ledger", "init"]):
        res, _ = bcsfl(*command, "--help", cwd=tmp_path)
        assert res.returncode == 0, command
        assert res.stdout.split("\n\n")[1].strip(), f"{command}: no description"
        assert command[1] == "verify" or "(default:" in res.stdout, command  # verify's anchors have none


def test_ledger_verify_and_show_leave_an_empty_or_missing_file_alone(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in ("verify", "show"):
        res, _ = bcsfl("ledger", command, "empty.db", cwd=tmp_path)
        assert "not a ledger" in assert_one_line_error(res, "ERROR: cannot open ledger")
        res, _ = bcsfl("ledger", command, "missing.db", cwd=tmp_path)
        assert assert_one_line_error(res, "ERROR: cannot open ledger").endswith("no such ledger file")
    assert empty.stat().st_size == 0 and not (tmp_path / "missing.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_the_server_app_s_refusal_of_a_chain_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from bcsfl_flower import cli, simulate
    from bcsfl_flower.strategy import ResumeError

    def refuse(*args: object, **kwargs: object) -> None:
        raise ResumeError("the ledger certifies a different model: pass a new --ledger")

    monkeypatch.setattr(simulate, "simulate", refuse)
    assert cli.main(["simulate", "--ledger", "memory", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "bcsfl simulate: the ledger certifies a different model: pass a new --ledger\n"


def test_the_first_ctrl_c_interrupts_and_the_second_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from bcsfl_flower import cli

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    handler = cli._Interrupt()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    assert exits == []
    with pytest.raises(KeyboardInterrupt):  # the fake os._exit returns: the handler goes on to raise
        handler(signal.SIGINT, None)
    assert exits == [cli.INTERRUPTED]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_a_ledger_that_verifies(tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "bcsfl_flower.cli", "simulate", "--engine", "inprocess",
                                 "--rounds", "40", "--out", str(out)], stdout=handle, stderr=subprocess.STDOUT,
                                cwd=tmp_path, env=ENV)
        try:
            deadline = time.monotonic() + 300
            while "round 2/" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            code = proc.wait(timeout=15)
            assert time.monotonic() - sent < 15
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("bcsfl: interrupted"), text[-500:]
    res, _ = bcsfl("ledger", "verify", str(out / "ledger.db"), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("OK: "), res.stdout + res.stderr


@pytest.mark.slow
def test_a_run_whose_every_round_fails_exits_non_zero(tmp_path: Path) -> None:
    """Every client attacks: no update is ever accepted, no round commits, and the command says so (exit 1)."""
    res, _ = bcsfl("simulate", "--engine", "inprocess", "--num-clients", "4", "--rounds", "1",
                   "--malicious-fraction", "0.9", "--attack", "sign-flip", "--out", str(tmp_path / "run"),
                   cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "bcsfl simulate: every round failed (no update accepted" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
