"""The robustness grid's plan (seeds, attacks, datasets) and its summary: mean and spread per cell,
worst case = min over attacks of the mean over seeds, honest rejections with no attack."""

from __future__ import annotations

import csv
import math
from argparse import Namespace

import pytest

from bcsfl_flower import settings
from bcsfl_flower.client.attacks import FULL_KNOWLEDGE
from bcsfl_flower.data import DATASETS
from experiments import common, robustness, robustness_summary


def test_the_full_grid_covers_seeds_fractions_datasets_and_every_attack():
    full = robustness.FULL
    assert common.floats(full["seeds"]) == [7, 8, 9]
    assert 0.1 in common.floats(full["fractions"]) and 0.0 in common.floats(full["fractions"])
    assert set(common.words(full["datasets"])) == {"mnist", "fashion-mnist"} <= set(DATASETS)
    attacks = common.words(full["attacks"])
    assert set(robustness.FULL_KNOWLEDGE_ATTACKS) == FULL_KNOWLEDGE and FULL_KNOWLEDGE <= set(attacks)
    assert set(attacks) <= set(settings.ATTACKS) and "none" not in attacks
    strategies = common.words(full["strategies"])
    assert {"bulyan", "bulyan-paper", "bcsfl", "fltrust"} <= set(strategies) <= set(settings.STRATEGIES)
    # other experiments take ATTACKS as the partial-knowledge set: it did not grow
    assert not set(robustness.ATTACKS) & FULL_KNOWLEDGE


def test_plan_seed_by_seed_and_clean_settings_once_per_seed():
    a = Namespace(datasets="digits", alphas="0.5", fractions="0,0.3", attacks="alie,alie-full", strategies="bcsfl,fedavg",
                  seeds="7,8", num_clients=6, rounds=2, local_epochs=1, lr=0.05)
    runs = robustness.plan(a)
    assert len(runs) == 2 * 2 + 2 * 2 * 2  # clean: seeds x strategies; attacked: seeds x attacks x strategies
    assert {r[3] for r in runs if r[2] == 0} == {"none"}
    attacked = [r for r in runs if r[2] > 0]
    assert [r[5] for r in attacked] == [7, 7, 7, 7, 8, 8, 8, 8]  # every attack of seed 7 before seed 8


def _row(attack, strategy, seed, acc, fraction=0.3, honest="", malicious=""):
    key = robustness._key("digits", 0.5, fraction, attack, strategy, seed, 6, 2)
    return {**dict(zip(robustness.FIELDS[:10], key)), "final_accuracy": str(acc),
            "accuracy_per_round": f"[0.5, {acc}]", "honest_rejected": str(honest), "malicious_rejected": str(malicious)}


ROWS = [
    # ipm: one seed collapses, but the mean (0.7) is above alie's steady 0.6
    _row("ipm", "bcsfl", 7, 0.9), _row("ipm", "bcsfl", 8, 0.9), _row("ipm", "bcsfl", 9, 0.3),
    _row("alie", "bcsfl", 7, 0.6), _row("alie", "bcsfl", 8, 0.6), _row("alie", "bcsfl", 9, 0.6),
    _row("alie", "fedavg", 7, 0.8),
    _row("none", "bcsfl", 7, 0.95, fraction=0, honest=0.1), _row("none", "bcsfl", 8, 0.93, fraction=0, honest=0.2),
    _row("none", "fedavg", 7, 0.96, fraction=0),
]


def test_cells_have_mean_and_spread_over_seeds_and_the_worst_case_is_the_worst_mean():
    agg = robustness_summary.aggregate(ROWS)
    attacked = agg[("digits", 0.5, 0.3, 6, 2, 1, 0.05)]
    ipm = attacked["ipm"]["bcsfl"]
    assert ipm.mean == pytest.approx(0.7) and ipm.spread == pytest.approx(math.sqrt(0.12)) and ipm.seeds == 3
    assert (ipm.lowest, ipm.highest) == (0.3, 0.9)
    assert ipm.curve == pytest.approx([0.5, 0.7])
    assert attacked["alie"]["fedavg"].spread == 0.0 and attacked["alie"]["fedavg"].seeds == 1
    worst = robustness_summary.worst_case(agg)[("digits", 0.5, 0.3, 6, 2, 1, 0.05)]
    assert worst["bcsfl"][:3] == (pytest.approx(0.6), "alie", 2)  # not ipm's single 0.3 seed
    assert worst["fedavg"][:3] == (0.8, "alie", 1)
    clean = robustness_summary.clean_rejections(agg)
    assert list(clean) == [("digits", 0.5, 0.0, 6, 2, 1, 0.05)]
    assert set(clean[("digits", 0.5, 0.0, 6, 2, 1, 0.05)]) == {"bcsfl"}  # fedavg records no rejections
    assert clean[("digits", 0.5, 0.0, 6, 2, 1, 0.05)]["bcsfl"].honest_rejected == pytest.approx(0.15)


def test_summary_prints_worst_cases_and_clean_rejections_and_writes_one_row_per_cell(tmp_path, capsys):
    robustness_summary.write_summary(robustness_summary.aggregate(ROWS), tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    ipm = next(r for r in rows if r["attack"] == "ipm")
    assert (ipm["seeds"], ipm["mean_final_accuracy"], ipm["min_seed"]) == ("3", "0.7", "0.3")
    robustness.summarise(ROWS, tmp_path)
    out = capsys.readouterr().out
    assert "bcsfl          worst 0.6000 ± 0.0000 (alie; 2 attack(s), 3 seed(s))" in out
    assert "honest client-rounds rejected with no attack: bcsfl 0.150" in out


def test_existing_rows_are_kept_and_skipped(tmp_path, capsys):
    path = tmp_path / "r.csv"
    for r in ROWS:
        common.append_row(path, robustness.FIELDS, r)
    args = ["--csv", str(path), "--dry-run", "--datasets", "digits", "--alphas", "0.5", "--fractions", "0,0.3",
            "--attacks", "ipm,alie", "--strategies", "bcsfl", "--seeds", "7,8,9", "--num-clients", "6",
            "--rounds", "2", "--local-epochs", "1", "--lr", "0.05"]
    assert robustness.main(args) == 0
    out = capsys.readouterr().out  # every attacked seed is there; the clean setting lacks seed 9
    assert "1 run(s) to do, 8 already in" in out and "('digits', 0.5, 0.0, 'none', 'bcsfl', 9," in out
    assert len(common.read_rows(path)) == len(ROWS)


@pytest.mark.slow
def test_a_digits_slice_with_full_knowledge_attacks_runs(tmp_path):
    path = tmp_path / "grid.csv"
    args = ["--datasets", "digits", "--alphas", "0.5", "--fractions", "0.34", "--attacks", "ipm100-full,scaling-max",
            "--strategies", "bcsfl,fedavg,bulyan-paper", "--seeds", "7", "--num-clients", "7", "--rounds", "2",
            "--engine", "inprocess", "--jobs", "2", "--threads", "1", "--csv", str(path),
            "--work-dir", str(tmp_path / "runs")]
    assert robustness.main(args) == 0
    rows = {(r["attack"], r["strategy"]): r for r in common.read_rows(path)}
    assert len(rows) == 6
    assert float(rows[("ipm100-full", "fedavg")]["final_accuracy"]) < 0.3  # -100 x the honest mean wrecks FedAvg
    assert float(rows[("ipm100-full", "bcsfl")]["malicious_rejected"]) == 1.0
    assert (tmp_path / "robustness_summary.csv").is_file()
