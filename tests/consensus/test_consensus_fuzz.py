"""The fuzzer finds nothing in the real replica and finds the planted bugs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bcsfl_flower.consensus.bugs import PLANTED_BUGS
from bcsfl_flower.consensus.scenario import draw_scenario, run_scenario
from experiments.consensus_fuzz import fuzz

REPO = Path(__file__).resolve().parents[2]


def test_small_fuzz_run_has_no_violations():
    out = io.StringIO()
    assert fuzz(4, 40, seed=5, stream=out)[:2] == (0, 0), out.getvalue()
    assert fuzz(7, 10, seed=5, stream=out)[:2] == (0, 0), out.getvalue()


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_fuzzer_finds_planted_bug_as_conflicting_commits(bug):
    """Not just broken certificates: two correct replicas execute different requests."""
    for seed in range(400):
        out = run_scenario(draw_scenario(seed, 4), PLANTED_BUGS[bug])
        if any("but replica" in p for p in out.safety):
            return
    pytest.fail(f"no conflicting commits found for planted bug {bug}")


def test_cli_last_line_and_planted_bug_report():
    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.consensus_fuzz", *args],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        return proc.stdout.strip().splitlines()

    assert run("--nodes", "4", "--schedules", "5", "--seed", "2")[-1] == (
        "5 schedules, 0 safety violations, 0 liveness failures"
    )
    lines = run("--nodes", "4", "--schedules", "5", "--seed", "2", "--planted-bug", "commit-on-f+1-prepares")
    last = lines[-1]
    assert last.startswith("5 schedules, ") and not last.startswith("5 schedules, 0 safety")
    assert any("reproduce: python -m experiments.consensus_fuzz --nodes 4 --replay" in line for line in lines)
