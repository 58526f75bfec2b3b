"""The in-process engine (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcsfl_flower.settings import RunSettings
from bcsfl_flower.simulate import simulate

REPO = Path(__file__).resolve().parents[2]

# Runs `bcsfl simulate` with ray and flwr.simulation made unimportable, as on a machine
# where only Flower's pure-Python parts are installed.
NO_RAY = """
import sys
sys.modules["ray"] = None
sys.modules["flwr.simulation"] = None
from bcsfl_flower.cli import main
code = main(sys.argv[1:])
assert not any(m.startswith("ray.") for m in sys.modules), "ray was imported"
sys.exit(code)
"""


def _settings(tmp_path: Path, strategy: str, **kw) -> RunSettings:
    return RunSettings(strategy=strategy, dataset="digits", num_clients=3, num_server_rounds=2, root_size=50,
                       bcsfl_ledger=f"sqlite:///{tmp_path / 'ledger.db'}", bcsfl_key_dir=str(tmp_path / "keys"),
                       out=str(tmp_path / "out"), **kw)


def _check(metrics: dict, out: Path) -> None:
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        assert r["accepted"], r
        assert isinstance(r["accuracy"], float)
    assert isinstance(metrics["final_accuracy"], float) and metrics["final_accuracy"] > 0.2
    assert metrics["device"] == "cpu" and metrics["settings"]["device"] == "cpu"


def test_inprocess_bcsfl_runs_without_ray(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-c", NO_RAY, "simulate", "--engine", "inprocess", "--num-clients", "5", "--rounds", "2",
         "--root-size", "50", "--malicious-fraction", "0.2", "--attack", "sign-flip", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    _check(metrics, out)
    bad = set(metrics["malicious_clients"])
    assert len(bad) == 1 and all(bad <= set(r["rejected"]) for r in metrics["rounds"])
    assert all(len(r["committee"]) == 4 and r["model_hash"] for r in metrics["rounds"])


def test_inprocess_fedavg(tmp_path):
    s = _settings(tmp_path, "fedavg")
    metrics = simulate(s, "inprocess")
    _check(metrics, Path(s.out))
    assert all(r["accepted"] == ["client-0", "client-1", "client-2"] for r in metrics["rounds"])


def test_unknown_engine(tmp_path):
    with pytest.raises(ValueError, match="engine"):
        simulate(_settings(tmp_path, "fedavg"), "threads")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BCSFL_TEST_RAY_PARITY"),
                    reason="45 s on 2 cores (Ray's start-up); set BCSFL_TEST_RAY_PARITY=1 to run")
def test_inprocess_matches_flowers_ray_engine(tmp_path):
    """Same settings, same committed models: the in-process engine is a transport only."""
    hashes = {}
    for engine in ("ray", "inprocess"):
        out = tmp_path / engine
        res = subprocess.run(
            [sys.executable, "-m", "bcsfl_flower.cli", "simulate", "--engine", engine, "--num-clients", "5",
             "--rounds", "2", "--root-size", "50", "--malicious-fraction", "0.2", "--attack", "sign-flip",
             "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        rounds = json.loads((out / "metrics.json").read_text())["rounds"]
        hashes[engine] = [(r["model_hash"], r["accepted"], r["accuracy"]) for r in rounds]
    assert hashes["ray"] == hashes["inprocess"]


def test_local_grid_delivers_in_node_order_and_copies():
    """Replies come in node order whatever order the strategy sampled; a node gets a copy."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    from bcsfl_flower.inprocess import LocalGrid

    app = ClientApp()
    seen = []

    @app.train()
    def train_fn(msg, context):
        seen.append(int(context.node_config["partition-id"]))
        msg.content["config"]["touched"] = True  # must not reach the server's message
        return Message(RecordDict({"config": ConfigRecord({"pid": seen[-1]})}), reply_to=msg)

    grid = LocalGrid(app, 4)
    sent = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="train", group_id="1")
            for n in (102, 100, 103, 101)]
    replies = list(grid.send_and_receive(sent))
    assert seen == [0, 1, 2, 3]
    assert [r.content["config"]["pid"] for r in replies] == [0, 1, 2, 3]
    assert all("touched" not in m.content["config"] for m in sent)
    assert all(r.metadata.reply_to_message_id and r.metadata.message_id for r in replies)


def test_local_grid_turns_a_client_exception_into_an_error_reply():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    from bcsfl_flower.inprocess import LocalGrid

    app = ClientApp()

    @app.train()
    def train_fn(msg, context):
        raise ValueError("boom")

    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=100, message_type="train", group_id="1")
    (reply,) = LocalGrid(app, 1).send_and_receive([msg])
    assert reply.has_error() and "boom" in reply.error.reason
    with pytest.raises(Exception, match="boom"):
        LocalGrid(app, 1, catch_errors=False).send_and_receive([msg])
