"""The end-to-end claim in one command: BCS-FL under attack vs FedAvg attacked and clean.

    python -m experiments.end_to_end                      # MNIST from $BCSFL_DATA_DIR/mnist or the cache
    python -m experiments.end_to_end --data-dir /path/to/mnist

runs three ``bcsfl simulate`` jobs in the same setting (MNIST, 20 clients, Dirichlet
0.5, seed 7, 10 rounds; 30% sign-flipping clients for the attacked runs), verifies
BCS-FL's ledger, and prints the three figures the README quotes: BCS-FL's final
accuracy against clean FedAvg, against attacked FedAvg, and the share of malicious
client-rounds that BCS-FL rejected.

The data is checked before anything runs: without it the script prints one line saying
how to provide it and exits 2. Each job runs into a temporary folder beside its
destination and replaces ``--out/<job>`` only when it succeeded, so a failed or
interrupted run leaves the results already there (the committed ones by default) as
they were; ``summary.json`` is written last, once all three jobs are in place.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bcsfl_flower.data import DatasetUnavailable, dataset_dir

from .common import run_fresh

JOBS = ("bcsfl_attacked", "fedavg_attacked", "fedavg_clean")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run(name: str, out: Path, common: list[str], extra: list[str], reuse: bool = False) -> dict:
    """Run one job into a fresh folder; it replaces ``out/name`` only when it succeeded."""
    final = out / name
    if reuse and (final / "metrics.json").is_file():
        metrics = json.loads((final / "metrics.json").read_text())
        print(f"{name:16s} final accuracy {metrics['final_accuracy']:.4f}  (reused {final})", flush=True)
        return metrics
    started = time.perf_counter()
    log = out / f"{name}.log"
    code = run_fresh([*common, *extra], final, log)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}); see {log}; {final} is unchanged")
    metrics = json.loads((final / "metrics.json").read_text())
    print(f"{name:16s} final accuracy {metrics['final_accuracy']:.4f}  ({time.perf_counter() - started:.0f}s)", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="", help="folder with the dataset's IDX files (default: "
                        "$BCSFL_DATA_DIR/<dataset>, else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--malicious-fraction", type=float, default=0.3)
    parser.add_argument("--attack", default="sign-flip")
    parser.add_argument("--out", default="experiments/results/end_to_end")
    parser.add_argument("--reuse", default="", help="comma-separated runs (bcsfl_attacked, fedavg_attacked, "
                        "fedavg_clean) whose metrics.json in --out is kept instead of running them again, "
                        "e.g. the FedAvg runs after a change to BCS-FL alone")
    args = parser.parse_args()
    try:  # before anything else: no data, no runs, nothing touched
        data = dataset_dir(args.dataset, args.data_dir or None)
    except (DatasetUnavailable, ValueError) as err:
        print(f"experiments.end_to_end: {err}", file=sys.stderr)
        sys.exit(2)
    reuse = {x.strip() for x in args.reuse.split(",") if x.strip()}
    if reuse - set(JOBS):
        parser.error(f"--reuse: unknown run(s) {sorted(reuse - set(JOBS))}; choose from {', '.join(JOBS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--num-clients", str(args.num_clients),
              "--rounds", str(args.rounds), "--dirichlet-alpha", str(args.dirichlet_alpha), "--seed", str(args.seed)]
    if data is not None:
        common += ["--data-dir", str(data.resolve())]
    attacked = ["--malicious-fraction", str(args.malicious_fraction), "--attack", args.attack]
    b = run("bcsfl_attacked", out, common, ["--strategy", "bcsfl", *attacked], "bcsfl_attacked" in reuse)
    fa = run("fedavg_attacked", out, common, ["--strategy", "fedavg", *attacked], "fedavg_attacked" in reuse)
    fc = run("fedavg_clean", out, common, ["--strategy", "fedavg", "--malicious-fraction", "0", "--attack", "none"],
             "fedavg_clean" in reuse)
    verify = subprocess.run([sys.executable, "-m", "bcsfl_flower.cli", "ledger", "verify",
                             str(out / "bcsfl_attacked" / "ledger.db")], capture_output=True, text=True)
    bad = set(b["malicious_clients"])
    rounds = b["rounds"]
    caught = sum(len(bad & set(r["rejected"])) for r in rounds) / max(1, len(bad) * len(rounds))
    honest = sum(len(set(r["rejected"]) - bad) for r in rounds) / max(1, len(rounds))
    summary = {
        "bcsfl": b["final_accuracy"], "fedavg_attacked": fa["final_accuracy"], "fedavg_clean": fc["final_accuracy"],
        "bcsfl_minus_clean": b["final_accuracy"] - fc["final_accuracy"],
        "bcsfl_minus_attacked": b["final_accuracy"] - fa["final_accuracy"],
        "malicious_rejected": caught, "honest_rejected_per_round": honest,
        "ledger_verify": verify.stdout.strip() or verify.stderr.strip(),
    }
    _write_json(out / "summary.json", summary)
    print(f"ledger: {summary['ledger_verify']}")
    print(f"bcsfl - fedavg_clean = {summary['bcsfl_minus_clean']:+.4f}; "
          f"bcsfl - fedavg_attacked = {summary['bcsfl_minus_attacked']:+.4f}; "
          f"malicious client-rounds rejected = {caught:.2f} (honest rejected per round {honest:.1f})")
    if verify.returncode != 0:
        sys.exit(f"ledger verify failed (exit {verify.returncode})")


if __name__ == "__main__":
    main()
