"""The robustness grid's CSV: widening the header, merging another machine's rows,
and running cells several at a time."""

from __future__ import annotations

import csv
import importlib.util
import threading
from argparse import Namespace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

from experiments import common, robustness  # noqa: E402

OLD_FIELDS = [f for f in robustness.FIELDS if f != "machine"]


def _row(strategy: str, acc: float, **extra) -> dict:
    key = robustness._key("mnist", 0.5, 0.3, "ipm", strategy, 7, 20, 10, 1, 0.05)
    return dict(zip(robustness.FIELDS[:10], key), final_accuracy=acc, accuracy_per_round=[acc],
                seconds=1.0, **extra)


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    return lines[0], common.read_rows(path)


def test_append_row_widens_the_header_and_keeps_old_rows_aligned(tmp_path):
    path = tmp_path / "r.csv"
    common.append_row(path, OLD_FIELDS, _row("fedavg", 0.5))
    common.append_row(path, OLD_FIELDS, _row("krum", 0.25))
    common.append_row(path, robustness.FIELDS, _row("bcsfl", 0.75, machine="inprocess cuda / 16 cores"))
    header, rows = _read(path)
    assert header == list(robustness.FIELDS)
    with open(path, newline="") as handle:
        assert all(len(line) == len(header) for line in csv.reader(handle))
    assert [(r["strategy"], r["final_accuracy"], r["machine"]) for r in rows] == [
        ("fedavg", "0.5", ""), ("krum", "0.25", ""), ("bcsfl", "0.75", "inprocess cuda / 16 cores")]
    assert rows[0]["accuracy_per_round"] == "[0.5]" and rows[0]["seconds"] == "1"
    # a script that writes fewer columns than the file has: the file keeps them all
    common.append_row(path, OLD_FIELDS, _row("bulyan", 0.1))
    header2, rows2 = _read(path)
    assert header2 == header and rows2[-1]["machine"] == "" and rows2[-1]["strategy"] == "bulyan"


def test_merge_adds_only_rows_not_there_yet(tmp_path):
    dst, src = tmp_path / "here.csv", tmp_path / "gpu.csv"
    common.append_row(dst, OLD_FIELDS, _row("fedavg", 0.5))
    common.append_row(src, robustness.FIELDS, _row("fedavg", 0.9, machine="gpu"))  # same run: skipped
    common.append_row(src, robustness.FIELDS, _row("bcsfl", 0.8, machine="gpu"))
    common.append_row(src, robustness.FIELDS, _row("bcsfl", 0.7, machine="gpu"))  # duplicate within src
    assert common.merge_rows(dst, src, robustness.row_key, robustness.FIELDS) == (1, 2)
    header, rows = _read(dst)
    assert header == list(robustness.FIELDS)
    assert [(r["strategy"], r["final_accuracy"], r["machine"]) for r in rows] == [
        ("fedavg", "0.5", ""), ("bcsfl", "0.8", "gpu")]
    assert common.merge_rows(dst, src, robustness.row_key, robustness.FIELDS) == (0, 3)  # idempotent
    assert robustness.main(["--csv", str(dst), "--merge", str(src), "--plots", str(tmp_path)]) == 0


def test_run_grid_several_at_a_time_parent_writes_each_row(tmp_path, monkeypatch):
    keys = [robustness._key("digits", 0.5, 0.3, "ipm", s, 7, 3, 2) for s in ("fedavg", "krum", "bcsfl", "bulyan")]

    running, most = set(), [0]
    lock, all_in = threading.Lock(), threading.Barrier(len(keys), timeout=30)

    def fake_run_one(key, a):
        with lock:
            running.add(key)
            most[0] = max(most[0], len(running))
        all_in.wait()  # returns only once every cell is running at the same time
        with lock:
            running.discard(key)
        if key[4] == "krum":
            raise RuntimeError("boom")
        return dict(zip(robustness.FIELDS[:10], key), final_accuracy=0.5, accuracy_per_round=[0.5], seconds=0.5,
                    machine="test")

    monkeypatch.setattr(robustness, "run_one", fake_run_one)
    path = tmp_path / "r.csv"
    failed = robustness.run_grid(keys, Namespace(jobs=4), path)
    assert most[0] == len(keys)  # side by side, not one after another
    assert failed == 1
    assert sorted(r["strategy"] for r in common.read_rows(path)) == ["bcsfl", "bulyan", "fedavg"]


@pytest.mark.slow
def test_inprocess_grid_two_cells_at_once(tmp_path):
    path = tmp_path / "grid.csv"
    args = ["--datasets", "digits", "--alphas", "0.5", "--fractions", "0.3", "--attacks", "sign-flip",
            "--strategies", "fedavg,bcsfl", "--seeds", "7", "--num-clients", "6", "--rounds", "2", "--engine", "inprocess",
            "--jobs", "2", "--threads", "1", "--csv", str(path), "--work-dir", str(tmp_path / "runs")]
    assert robustness.main(args) == 0
    rows = common.read_rows(path)
    assert sorted(r["strategy"] for r in rows) == ["bcsfl", "fedavg"]
    for r in rows:
        assert r["machine"].startswith("inprocess cpu, 2 jobs x 1 thread / ")
        assert 0.0 < float(r["final_accuracy"]) <= 1.0
    if importlib.util.find_spec("matplotlib") is not None:  # plots are the [experiments] extra
        assert (tmp_path / "robustness_worstcase.png").is_file()  # beside the CSV
    assert robustness.main(args) == 0 and len(common.read_rows(path)) == 2  # resumes: nothing to do
