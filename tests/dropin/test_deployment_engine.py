"""The switched example app on a real SuperLink with four real SuperNodes (insecure, 127.0.0.1).

Four is the fewest BCS-FL runs with (a committee of 3f+1, f >= 1); one round keeps it light
(about 90 s on 2 cores; two rounds took 160 s). The committee runs on the SuperNodes: their
keys never leave them, each enrols by its own ticket.
"""

import os
from pathlib import Path

import pytest

from experiments.deployment_engine import run

ROOT = Path(__file__).resolve().parents[2]
# Real MNIST for these tests: $BCSFL_DATA_DIR/mnist, else the checkout's ../shared/datasets/mnist.
MNIST = (Path(os.environ["BCSFL_DATA_DIR"]) if os.environ.get("BCSFL_DATA_DIR")
         else ROOT.parent / "shared" / "datasets") / "mnist"
NO_MNIST = f"needs real MNIST (its four IDX files) in {MNIST}: set BCSFL_DATA_DIR to a folder holding mnist/"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=NO_MNIST)
def test_bcsfl_on_the_deployment_engine_commits_every_round(tmp_path):
    summary = run(str(MNIST), nodes=4, rounds=1, workdir=tmp_path)
    assert summary["blocks"] == 1
    assert summary["accepted_per_round"] == [4]
    assert summary["enrolled"] == [f"client-{i}" for i in range(4)]  # each by its own ticket
    assert summary["verify"].startswith("OK")
