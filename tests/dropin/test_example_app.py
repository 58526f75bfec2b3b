"""The README's diff turns a stock FedAvg app into a BCS-FL app that runs under ``flwr run``."""

import inspect
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bcsfl_flower
from bcsfl_flower.ledger import open_ledger, verify_chain

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quickstart-pytorch"
DIFF = EXAMPLE / "fedavg-to-bcsfl.diff"
# Real MNIST for these tests: $BCSFL_DATA_DIR/mnist, else the checkout's ../shared/datasets/mnist.
MNIST = (Path(os.environ["BCSFL_DATA_DIR"]) if os.environ.get("BCSFL_DATA_DIR")
         else ROOT.parent / "shared" / "datasets") / "mnist"
NO_MNIST = f"needs real MNIST (its four IDX files) in {MNIST}: set BCSFL_DATA_DIR to a folder holding mnist/"


def git_apply(folder: Path, *args: str) -> None:
    subprocess.run(["git", "apply", *args, str(DIFF)], cwd=folder, check=True, capture_output=True)


def copy_example(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.db*", ".bcsfl", "final_model.pt"))
    return dest


def test_public_names_of_the_drop_in():
    assert callable(bcsfl_flower.bcsfl_mod) and bcsfl_flower.bcsfl_mod.__name__.endswith("_mod")
    from flwr.serverapp.strategy import FedAvg

    assert set(inspect.signature(FedAvg).parameters) <= set(inspect.signature(bcsfl_flower.BCSFL).parameters)


def test_readme_carries_the_diff_and_it_changes_at_most_five_lines(tmp_path):
    diff = DIFF.read_text()
    assert diff.strip() in (ROOT / "README.md").read_text()
    changed = [l for l in diff.splitlines() if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert sum(l.startswith("+") for l in changed) <= 5
    app = copy_example(tmp_path)
    git_apply(app, "-R")  # back to the stock FedAvg app
    server = (app / "pytorchexample" / "server_app.py").read_text()
    assert "FedAvg(" in server and "bcsfl" not in server + (app / "pytorchexample" / "client_app.py").read_text()
    git_apply(app)  # and forward again: exactly the committed BCS-FL app
    for name in ("server_app.py", "client_app.py"):
        assert (app / "pytorchexample" / name).read_text() == (EXAMPLE / "pytorchexample" / name).read_text()


def _stop_local_superlink(flwr_home: Path) -> None:
    out = subprocess.run(["pgrep", "-f", str(flwr_home)], capture_output=True, text=True).stdout.split()
    for pid in out:
        children = subprocess.run(["pgrep", "-f", f"--parent-pid {pid}"], capture_output=True, text=True).stdout.split()
        for p in [*children, pid]:
            try:
                os.kill(int(p), signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=NO_MNIST)
def test_switched_app_runs_with_flwr_run_and_commits_blocks(tmp_path):
    app = copy_example(tmp_path)
    git_apply(app, "-R")
    git_apply(app)
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_TELEMETRY_ENABLED": "0"}
    flwr = Path(sys.executable).with_name("flwr")
    try:
        res = subprocess.run(
            [str(flwr), "run", ".", "--stream", "--federation-config", "num-supernodes=4 client-resources-num-cpus=1",
             "--run-config", f'data-dir="{MNIST}" num-server-rounds=2'],
            cwd=app, env=env, capture_output=True, text=True, timeout=420,
        )
    finally:
        _stop_local_superlink(home)
    log = res.stdout + res.stderr
    # `flwr run --stream` exits 0 even when the run failed: check what it did.
    assert res.returncode == 0 and "BCS-FL round 2: kept" in log, log[-4000:]
    with open_ledger(app / "bcsfl-ledger.db", create=False) as ledger:
        rounds = [b for b in ledger.blocks(1) if "round" in b.data]
        assert [b.data["round"] for b in rounds] == [1, 2]
        assert verify_chain(ledger).ok
        assert all(sum(d["kept"] for d in b.data["decisions"]) >= 3 for b in rounds)
        # enrolled on first use with the operator key the ServerApp created (.bcsfl/keys/enrolment.key)
        assert set(ledger.identities()) == {f"client-{i}" for i in range(4)}
    assert (app / ".bcsfl" / "keys" / "enrolment.key").is_file()
    assert (app / "final_model.pt").is_file()
