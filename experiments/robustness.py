"""Fig. 4 and past it: accuracy under poisoning, BCS-FL against robust baselines.

    python -m experiments.robustness --quick                  # digits, a few runs, minutes
    python -m experiments.robustness                          # the whole grid (a GPU machine's job)
    python -m experiments.robustness --datasets mnist --alphas 0.5 --fractions 0,0.3 \\
        --strategies bcsfl,fedavg,krum                        # a slice
    python -m experiments.robustness --plot-only              # re-plot the CSV
    python -m experiments.robustness --engine inprocess --device cuda --jobs 12 --threads 1 \\
        --csv /tmp/robustness_gpu.csv                         # 12 cells at a time, no Ray
    python -m experiments.robustness --merge /tmp/robustness_gpu.csv   # bring those rows back

Grid: dataset x Dirichlet alpha x malicious fraction x attack x strategy x seed. Each
cell is one ``bcsfl simulate`` subprocess (20 clients, 10 rounds by default) whose
``metrics.json`` becomes one row of ``experiments/results/robustness.csv``. Fraction 0
runs once per strategy with attack "none". Rows already in the CSV are skipped, so an
interrupted grid resumes where it stopped. ``--jobs N`` runs N cells at a time (each its
own subprocess; this process alone appends each row as its cell finishes), best with
``--engine inprocess`` (no Ray; clients of a cell train one after another) and
``--threads 1``; each row's ``machine`` column says engine, device and parallelism.

The full grid: MNIST and Fashion-MNIST, alpha 0.5 and 0.1, 0/10/30% malicious, seeds 7, 8
and 9, the seven partial-knowledge attacks (:data:`ATTACKS`) and the five full-knowledge
ones (:data:`FULL_KNOWLEDGE_ATTACKS`: the attackers know the round's honest updates, an
evaluation device in the ServerApp, :mod:`bcsfl_flower.omniscient`), against BCS-FL and
eight baselines (Flower's one-pass Bulyan and the paper's, ``bulyan-paper``, both).

Summary (:mod:`.robustness_summary`): per cell the mean final accuracy over seeds and its
spread, written to ``robustness_summary.csv``; per strategy and setting the worst case,
the minimum over attacks of the mean over seeds; per clean setting the share of honest
client-rounds rejected with no attacker. Plots: accuracy per round, one panel per attack
and one line per strategy (the paper's Fig. 4), per setting; and a heat map of the worst
case per strategy and setting.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from statistics import mean

from . import common, robustness_summary

#: Partial-knowledge attacks (ALIE, IPM and min-max estimate honest statistics from the
#: attackers' own data); other experiments (compression.py) take this set as theirs.
ATTACKS = ("label-flip", "sign-flip", "gaussian", "scaling", "alie", "ipm", "min-max")
#: Full-knowledge attacks: the attackers know the round's honest updates (an evaluation
#: device in the ServerApp, bcsfl_flower/omniscient.py; committee "server", dense uploads).
FULL_KNOWLEDGE_ATTACKS = ("alie-full", "ipm-full", "ipm100-full", "minmax-full", "scaling-max")
GRID_ATTACKS = ATTACKS + FULL_KNOWLEDGE_ATTACKS
STRATEGIES = ("bcsfl", "fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "bulyan-paper",
              "fltrust")
FULL = dict(datasets="mnist,fashion-mnist", alphas="0.5,0.1", fractions="0,0.1,0.3",
            attacks=",".join(GRID_ATTACKS), strategies=",".join(STRATEGIES), seeds="7,8,9", num_clients=20,
            rounds=10, local_epochs=1, lr=0.05)
QUICK = dict(datasets="digits", alphas="0.5", fractions="0,0.3", attacks="sign-flip,ipm",
             strategies="bcsfl,fedavg,krum", seeds="7", num_clients=10, rounds=5, local_epochs=3, lr=0.05)
FIELDS = ("dataset", "alpha", "malicious_fraction", "attack", "strategy", "seed", "num_clients", "rounds",
          "local_epochs", "lr", "final_accuracy", "accuracy_per_round", "seconds", "malicious_rejected", "honest_rejected",
          "aggregate_seconds", "machine")
TRACKS_REJECTIONS = ("bcsfl", "fltrust", "bulyan-paper")  # strategies whose metrics say who was left out


def _key(dataset, alpha, fraction, attack, strategy, seed, clients, rounds, epochs=1, lr=0.05) -> tuple:
    return (dataset, round(float(alpha), 6), round(float(fraction), 6), attack, strategy, int(seed),
            int(clients), int(rounds), int(epochs), round(float(lr), 6))


def row_key(r: dict) -> tuple:
    return _key(r["dataset"], r["alpha"], r["malicious_fraction"], r["attack"], r["strategy"], r["seed"],
                r["num_clients"], r["rounds"], r.get("local_epochs") or 1, r.get("lr") or 0.05)


def plan(a: argparse.Namespace) -> list[tuple]:
    """Every run of the grid, settings first, then seed by seed, so a partial grid compares strategies
    (and a setting's first seed covers every attack before the next seed starts)."""
    runs = []
    for dataset in common.words(a.datasets):
        for alpha in common.floats(a.alphas):
            for fraction in common.floats(a.fractions):
                attacks = ["none"] if fraction == 0 else common.words(a.attacks)
                for seed in common.floats(a.seeds):
                    for attack in attacks:
                        for strategy in common.words(a.strategies):
                            runs.append(_key(dataset, alpha, fraction, attack, strategy, seed,
                                             a.num_clients, a.rounds, a.local_epochs, a.lr))
    return runs


def run_one(key: tuple, a: argparse.Namespace) -> dict:
    dataset, alpha, fraction, attack, strategy, seed, clients, rounds, epochs, lr = key
    name = f"{dataset}_a{alpha:g}_f{fraction:g}_{attack}_{strategy}_s{seed}_n{clients}_r{rounds}_e{epochs}_lr{lr:g}"
    args = ["--strategy", strategy, "--dataset", dataset, "--num-clients", clients, "--rounds", rounds,
            "--dirichlet-alpha", alpha, "--seed", seed, "--malicious-fraction", fraction, "--attack", attack,
            "--local-epochs", epochs, "--lr", lr]
    ddir = common.data_dir(dataset, a.data_dir)
    if ddir:
        args += ["--data-dir", ddir]
    metrics, seconds = common.simulate(args, Path(a.work_dir) / name, timeout=a.timeout, engine=a.engine,
                                       device=a.device, threads=a.threads)
    accs = [r["accuracy"] for r in metrics["rounds"]]
    aggs = [r["aggregate_seconds"] for r in metrics["rounds"] if r.get("aggregate_seconds") is not None]
    row = dict(zip(FIELDS[:10], key), final_accuracy=metrics["final_accuracy"],
               accuracy_per_round=[round(x, 4) for x in accs], seconds=seconds,
               aggregate_seconds=mean(aggs) if aggs else None,
               machine=common.run_machine(a.engine, metrics.get("device", a.device), a.jobs, a.threads))
    if strategy in TRACKS_REJECTIONS:
        row["malicious_rejected"], row["honest_rejected"] = common.rejection_rates(metrics, clients)
    return row


def summarise(rows: list[dict], outdir: Path) -> None:
    """Mean and spread per cell, worst case per strategy, clean honest rejections; plots (:mod:`.robustness_summary`)."""
    robustness_summary.summarise(rows, outdir, GRID_ATTACKS, STRATEGIES)


def run_grid(todo: list[tuple], a: argparse.Namespace, csv_path: Path) -> int:
    """Run ``todo``, ``a.jobs`` cells at a time; append each row as its cell finishes.

    Cells run in worker threads, each driving its own ``bcsfl simulate`` subprocess;
    only this (main) thread writes the CSV, so rows never interleave and an interrupted
    grid resumes from what is there. Returns the number of failed cells.
    """
    failed = 0
    pool = ThreadPoolExecutor(max_workers=a.jobs, thread_name_prefix="cell")
    try:
        futures = {pool.submit(run_one, key, a): key for key in todo}
        bar = common.progress(as_completed(futures), len(todo), f"robustness ({a.jobs} at a time)")
        for future in bar:
            key = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - one bad run must not stop the grid
                failed += 1
                print(f"\n{key}: {exc}", file=sys.stderr)
                continue
            common.append_row(csv_path, FIELDS, row)
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"last: {key[0]} a={key[1]:g} {key[2]:.0%} {key[3]} {key[4]}")
            print(f"\n{key[4]:14s} {key[0]} a={key[1]:g} {key[2]:.0%} {key[3]:10s} seed {key[5]}: "
                  f"final {row['final_accuracy']:.4f} ({row['seconds']:.0f}s)", flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small subset: {QUICK}")
    for name in ("datasets", "alphas", "fractions", "attacks", "strategies", "seeds"):
        p.add_argument(f"--{name}", help=f"comma-separated (default {FULL[name]})")
    p.add_argument("--num-clients", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--data-dir", help="dataset folder, or a folder holding mnist/ and fashion-mnist/ (default "
                   "$BCSFL_DATA_DIR/<dataset>, else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    p.add_argument("--csv", default=str(common.RESULTS / "robustness.csv"))
    p.add_argument("--plots", help="folder for the PNGs (default: the --csv file's folder)")
    p.add_argument("--work-dir", default=str(common.RUNS / "robustness"), help="run folders (metrics, ledgers, logs)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one run is abandoned")
    p.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                   help="bcsfl simulate --engine: ray (Flower's engine, the reference) or inprocess (no Ray, "
                        "a cell's clients one after another in its subprocess)")
    p.add_argument("--device", default="cpu", help="torch device of each cell: cpu, cuda, auto")
    p.add_argument("--jobs", type=int, default=1, help="cells run at a time, each its own subprocess")
    p.add_argument("--threads", type=int, help="torch threads per cell (default 1 per client)")
    p.add_argument("--merge", metavar="OTHER_CSV",
                   help="append OTHER_CSV's rows whose run is not in --csv yet (rows from another machine), "
                        "then plot; runs nothing")
    p.add_argument("--plot-only", action="store_true", help="re-read the CSV and plot")
    p.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    a = p.parse_args(argv)
    defaults = QUICK if a.quick else FULL
    for name, value in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    if a.jobs < 1:
        p.error("--jobs must be at least 1")
    csv_path = Path(a.csv)
    outdir = Path(a.plots) if a.plots else csv_path.resolve().parent
    outdir.mkdir(parents=True, exist_ok=True)
    if a.merge:
        added, skipped = common.merge_rows(csv_path, Path(a.merge), row_key, FIELDS)
        print(f"merged {a.merge} into {csv_path}: {added} row(s) added, {skipped} skipped (already there, or no key)")
    elif not a.plot_only:
        done = {row_key(r) for r in common.read_rows(csv_path)}
        todo = [k for k in plan(a) if k not in done]
        if not a.dry_run:
            for dataset in sorted({k[0] for k in todo}):  # first: without the data, one line and exit 2
                common.data_dir(dataset, a.data_dir)
        print(f"{len(todo)} run(s) to do, {len(plan(a)) - len(todo)} already in {csv_path}; "
              f"{common.run_machine(a.engine, a.device, a.jobs, a.threads)}")
        if a.dry_run:
            for k in todo:
                print("  ", k)
            return 0
        failed = run_grid(todo, a, csv_path)
        if failed:
            print(f"{failed} run(s) failed; rerun to retry them", file=sys.stderr)
    rows = common.read_rows(csv_path)
    if not rows:
        print(f"no rows in {csv_path}")
        return 1
    summarise(rows, outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
