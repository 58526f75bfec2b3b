"""The switched example app on a real SuperLink with two real SuperNodes (insecure, 127.0.0.1)."""

from pathlib import Path

import pytest

from experiments.deployment_engine import run

MNIST = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mnist"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="needs ../shared/datasets/mnist")
def test_bcsfl_on_the_deployment_engine_commits_every_round(tmp_path):
    summary = run(str(MNIST), nodes=2, rounds=2, workdir=tmp_path)
    assert summary["blocks"] == 2
    assert summary["accepted_per_round"] == [2, 2]
    assert summary["verify"].startswith("OK")
