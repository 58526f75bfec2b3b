"""A Byzantine coordinator in every round's committee vs an honest committee, same seed.

    python -m experiments.byzantine_coordinators --dataset digits --num-clients 10 --rounds 5

The first coordinator drawn each round (PBFT's view-0 primary) proposes a poisoned
aggregate. Prints both runs' accuracy per round, whether the committed models are the
same, and the view changes the ledger recorded for each round.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcsfl_flower.ledger import open_ledger

from .common import data_dir, run_fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default="",
                        help="dataset folder (default $BCSFL_DATA_DIR/<dataset>, "
                             "else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="experiments/results/byzantine_coordinators")
    args = parser.parse_args()
    data = data_dir(args.dataset, args.data_dir)  # first: without the data, one line and exit 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--num-clients", str(args.num_clients), "--rounds", str(args.rounds),
              "--seed", str(args.seed), "--strategy", "bcsfl"] + (["--data-dir", data] if data else [])
    runs = {}
    for name, extra in (("honest", []), ("byzantine", ["--byzantine-coordinators", "1"])):
        if run_fresh([*common, *extra], out / name, out / f"{name}.log"):  # failed: out/name unchanged
            sys.exit(f"{name} failed; see {out / name}.log")
        runs[name] = json.loads((out / name / "metrics.json").read_text())
    with open_ledger(out / "byzantine" / "ledger.db", create=False) as ledger:
        consensus = [b.data.get("consensus", {}) for b in ledger.blocks(1) if "round" in b.data]
    print("round  honest_acc  byzantine_acc  same_model  view_changes  commit_view  dissenters")
    for h, b, c in zip(runs["honest"]["rounds"], runs["byzantine"]["rounds"], consensus):
        print(f"{h['round']:5d}  {h['accuracy']:10.4f}  {b['accuracy']:13.4f}  {str(h['model_hash'] == b['model_hash']):>10s}"
              f"  {c.get('view_changes', 0):12d}  {c.get('commit_view', 0):11d}  {','.join(b.get('dissenters', []))}")
    print(f"final accuracy: honest {runs['honest']['final_accuracy']:.4f}, "
          f"byzantine primary every round {runs['byzantine']['final_accuracy']:.4f}")


if __name__ == "__main__":
    main()
