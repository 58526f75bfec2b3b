"""A real BCS-FL simulation (Flower, Ray backend) commits to a 4-node ledger cluster.

The cluster holds the charter from its start (``bcsfl ledger up`` writes ``enrolment.key`` and
``charter.json`` in its folder); the simulation takes that key (``--enrolment-key``) to enrol
its clients and the relay's identity, which signs the model uploads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcsfl_flower.ledger.cli import main as ledger_cli

from .cluster_helpers import chain, converge, start_cluster
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_simulation_commits_one_block_per_round_on_every_node(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "cluster", 4)
    try:
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0",
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT),
                                                          os.environ.get("PYTHONPATH")) if p))
        res = subprocess.run(
            [sys.executable, "-m", "bcsfl_flower.cli", "simulate", "--ledger", cluster.urls[1],
             "--enrolment-key", str(cluster.folder / "enrolment.key"),
             "--dataset", "digits", "--num-clients", "4", "--rounds", "2", "--seed", "3",
             "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
        assert all(r.get("committed") for r in rounds), rounds
        converge(cluster.urls)
        chains = [chain(u) for u in cluster.urls]
        assert all(c == chains[0] for c in chains)
        blocks = [b for b in chains[0] if isinstance(b["data"], dict)]
        round_blocks = [b for b in blocks if "round" in b["data"]]
        assert [b["data"]["round"] for b in round_blocks] == [1, 2]
        assert [b["sequenceNo"] for b in round_blocks] == [r["block"] for r in rounds]
        enrolled = {tx["data"]["enrol"]["client_id"] for b in blocks for tx in b["data"].get("transactions", [])
                    if "enrol" in tx["data"]}
        assert enrolled == {"relay", "client-0", "client-1", "client-2", "client-3"}
        assert ledger_cli(["verify", cluster.urls[2]]) == 0
    finally:
        cluster.stop()
    for j in range(cluster.n):
        assert ledger_cli(["verify", str(cluster.db_path(j))]) == 0
