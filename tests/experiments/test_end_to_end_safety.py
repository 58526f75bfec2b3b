"""The README's results command checks its data first and never destroys committed results.

It used to remove ``experiments/results/end_to_end/bcsfl_attacked`` before its first run
and fail 20 s later when the data was missing, leaving the committed metrics deleted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "experiments/results"


def _porcelain() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", RESULTS], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def _end_to_end(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.end_to_end", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def clean_results():
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    before = _porcelain()
    if before:
        pytest.skip(f"{RESULTS} already differs from the commit:\n{before}")
    committed = sorted(p for p in (ROOT / RESULTS / "end_to_end").rglob("*") if p.is_file())
    yield
    assert _porcelain() == ""
    assert sorted(p for p in (ROOT / RESULTS / "end_to_end").rglob("*") if p.is_file()) == committed


def _one_clear_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_missing_data_dir_exits_2_in_one_line_and_changes_nothing(clean_results, tmp_path):
    missing = tmp_path / "no-such-mnist"
    line = _one_clear_line(_end_to_end("--data-dir", str(missing)))
    assert str(missing) in line and "train-images-idx3-ubyte" in line and "--data-dir" in line


def test_no_data_and_no_download_exits_2_in_one_line_and_changes_nothing(clean_results, tmp_path):
    env = {**os.environ, "BCSFL_DATA_DIR": str(tmp_path), "BCSFL_DOWNLOAD": "0"}
    line = _one_clear_line(_end_to_end(env=env))
    assert str(tmp_path / "mnist") in line and "BCSFL_DATA_DIR" in line
    assert list(tmp_path.iterdir()) == []


def test_a_failing_job_leaves_the_previous_results_in_place(tmp_path):
    # a results folder like the committed one, and a job that fails after it started
    from experiments import end_to_end

    out = tmp_path / "out"
    (out / "bcsfl_attacked").mkdir(parents=True)
    (out / "bcsfl_attacked" / "metrics.json").write_text('{"final_accuracy": 0.98}')
    with pytest.raises(SystemExit, match="bcsfl_attacked failed"):
        end_to_end.run("bcsfl_attacked", out, ["--dataset", "digits", "--num-clients", "0"], [])
    assert (out / "bcsfl_attacked" / "metrics.json").read_text() == '{"final_accuracy": 0.98}'
    assert sorted(p.name for p in out.iterdir()) == ["bcsfl_attacked", "bcsfl_attacked.log"]  # no temporary folder


def test_a_job_that_succeeds_replaces_the_old_results_and_records_their_new_place(tmp_path):
    from experiments import end_to_end

    out = tmp_path / "out"
    (out / "fedavg_clean").mkdir(parents=True)
    (out / "fedavg_clean" / "metrics.json").write_text('{"final_accuracy": 0.5}')
    metrics = end_to_end.run("fedavg_clean", out, ["--dataset", "digits", "--num-clients", "4", "--rounds", "1",
                                                    "--engine", "inprocess"], ["--strategy", "fedavg"])
    on_disk = json.loads((out / "fedavg_clean" / "metrics.json").read_text())
    assert on_disk == metrics and len(on_disk["rounds"]) == 1
    assert on_disk["settings"]["out"] == str((out / "fedavg_clean").resolve())
    assert sorted(p.name for p in out.iterdir()) == ["fedavg_clean", "fedavg_clean.log"]
