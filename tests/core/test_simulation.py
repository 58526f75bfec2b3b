"""One real Flower simulation (Ray backend) through the ``bcsfl`` command."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def bcsfl(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bcsfl_flower.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_simulate_digits_with_an_attacker_then_verify_the_ledger(tmp_path):
    out = tmp_path / "run"
    # Five clients, one attacker: after round 1 the four honest ones still seat a committee of four.
    res = bcsfl("simulate", "--dataset", "digits", "--num-clients", "5", "--rounds", "3", "--root-size", "50",
                "--malicious-fraction", "0.2", "--attack", "sign-flip", "--seed", "3", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["malicious_clients"] and len(metrics["rounds"]) == 3
    bad = set(metrics["malicious_clients"])
    for r in metrics["rounds"]:
        assert bad <= set(r["rejected"]), r
        assert len(r["committee"]) == 4 and r["model_hash"]
    assert metrics["final_accuracy"] > 0.3
    assert "[bcsfl] round 3/3" in res.stdout + res.stderr
    # One progress line per round (kept, rejected, committed, seconds); Flower's INFO log only with --verbose.
    assert "; committed; " in res.stdout and "configure_train" not in res.stdout + res.stderr

    ledger = out / "ledger.db"
    ok = bcsfl("ledger", "verify", str(ledger))
    # genesis, the charter, five enrolments, and per round its pool and its certified block
    assert ok.returncode == 0 and "OK: 13 blocks" in ok.stdout, ok.stdout + ok.stderr
    shown = bcsfl("ledger", "show", str(ledger))
    assert shown.returncode == 0 and "genesis-hash" in shown.stdout
