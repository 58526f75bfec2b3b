"""What the committee's bound on declared example counts costs (issue: certified inputs, weights).

    python -m experiments.example_cap    # MNIST: --data-dir, $BCSFL_DATA_DIR/mnist or the cache

A client signs its example count, so the count is authentic, not true; the filter counts
it at most ``example_cap`` times the round's median claim (``--example-cap``, default 3).
This runs BCS-FL with the cap and without it (``--example-cap 0``) on MNIST (20 clients,
10 rounds, seed 7) at Dirichlet alpha 0.5 and 0.1, clean and with 30% sign-flipping
clients, two runs side by side (in-process engine, one thread each), appends each run to
``experiments/results/example_cap.csv`` (a finished cell is not run again) and prints
the table the README quotes: final accuracy per cell, with and without the cap.
"""

from __future__ import annotations

import argparse
import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import REPO, data_dir, simulate

FIELDS = ["alpha", "attack", "example_cap", "final_accuracy", "seconds"]
CELLS = [(alpha, attack, cap) for alpha in (0.5, 0.1) for attack in ("none", "sign-flip") for cap in (3.0, 0.0)]


def _read(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(r["alpha"], r["attack"], r["example_cap"]): r for r in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="",
                        help="dataset folder (default $BCSFL_DATA_DIR/mnist, "
                             "else ~/.cache/bcsfl/datasets/mnist, downloaded when online)")
    p.add_argument("--csv", default=str(REPO / "experiments" / "results" / "example_cap.csv"))
    p.add_argument("--work-dir", default=str(REPO / "runs" / "example_cap"))
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    a.data_dir = data_dir("mnist", a.data_dir)  # first: without the data, one line and exit 2
    path, work = Path(a.csv), Path(a.work_dir)
    done = _read(path)
    todo = [c for c in CELLS if (str(c[0]), c[1], str(c[2])) not in done]

    def run(cell: tuple[float, str, float]) -> dict[str, object]:
        alpha, attack, cap = cell
        args = ["--strategy", "bcsfl", "--dataset", "mnist", "--data-dir", a.data_dir, "--num-clients", 20,
                "--rounds", 10, "--seed", 7, "--dirichlet-alpha", alpha, "--example-cap", cap,
                "--malicious-fraction", 0.3 if attack != "none" else 0.0, "--attack", attack]
        metrics, seconds = simulate(args, work / f"a{alpha}_{attack}_cap{cap:g}", engine="inprocess", threads=1)
        return {"alpha": alpha, "attack": attack, "example_cap": cap,
                "final_accuracy": round(metrics["final_accuracy"], 4), "seconds": round(seconds)}

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for row in pool.map(run, todo):
            new = not path.is_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(row, flush=True)
    rows = _read(path)
    print("alpha  attack     cap=3   no cap  difference")
    for alpha in (0.5, 0.1):
        for attack in ("none", "sign-flip"):
            cap, free = (rows.get((str(alpha), attack, str(c))) for c in (3.0, 0.0))
            if cap and free:
                x, y = float(cap["final_accuracy"]), float(free["final_accuracy"])
                print(f"{alpha:<6} {attack:<10} {x:.4f}  {y:.4f}  {x - y:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
