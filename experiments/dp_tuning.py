"""DP-SGD training settings at a fixed per-client budget: which keep accuracy.

    python -m experiments.dp_tuning --data-dir ../shared/datasets/mnist --epsilon 3 \
        --batch-sizes 128,256 --lrs 1,2 --clips 1 --momenta 0,0.9          # 8 runs, hours on 2 cores
    python -m experiments.dp_tuning ... --engine inprocess --device cuda --jobs 14 --threads 1 \
        --csv /tmp/dp_gpu.csv                                              # on a GPU machine
    python -m experiments.dp_tuning --merge /tmp/dp_gpu.csv                # back here, into privacy.csv

Every combination of ``--batch-sizes`` x ``--lrs`` x ``--clips`` (per-example clipping
norm) x ``--momenta`` x ``--epochs-list`` x ``--strategies`` (x ``--server-momenta``, the
committee's momentum, for bcsfl) is one ``bcsfl simulate`` with
``--target-epsilon``: each client picks the noise that spends exactly that budget on its
own data over all rounds (``bcsfl_flower.training.privacy.client_noise``), with the tanh
"dp" model (``--models default``: the ReLU CNN; ``scatter``: ScatterNet + linear). The privacy unit is one training example of one client; delta is 1e-5. The
epsilon each client reached is read back from the ledger's last block (the clients'
signed reports). ``--baseline`` also runs the same setting without DP (the default batch,
learning rate and momentum, the same server momentum; the default model, or each of
``--baseline-models``), the row the cost of DP is read against.

Rows go to ``experiments/results/privacy.csv`` (its columns record batch, learning
rate, clip, momentum, server momentum and model), so the privacy table and its plot
(:mod:`.privacy_pruning`) show them; rows already there are skipped.
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from statistics import median

from . import common
from . import privacy_pruning
from .privacy_pruning import PRIVACY_FIELDS, ledger_epsilons

FIELDS = PRIVACY_FIELDS + ("momentum", "server_momentum", "accountant")
KEY = ("dataset", "num_clients", "rounds", "local_epochs", "alpha", "seed", "strategy", "target_epsilon",
       "batch_size", "lr", "dp_max_grad_norm", "momentum", "model", "server_momentum", "accountant")


def _key(row: dict) -> tuple:
    """A row's identity: its setting (numbers compared as floats; an empty cell as the legacy default)."""
    out = []
    for k in KEY:
        v = row.get(k)
        v = privacy_pruning.LEGACY_CELLS.get(k, v) if v in ("", None) else v
        try:
            out.append(round(float(v), 9))
        except (TypeError, ValueError):
            out.append(str(v))
    return tuple(out)


def plan(a: argparse.Namespace) -> list[dict]:
    """The runs of the grid, as the rows' setting columns."""
    base = dict(dataset=a.dataset, num_clients=a.num_clients, rounds=a.rounds, alpha=a.alpha, seed=a.seed,
                accountant=a.accountant)
    runs = []
    momenta = common.floats(a.server_momenta)
    for strategy, server_momentum in ((s, m) for s in common.words(a.strategies)
                                      for m in (momenta if s == "bcsfl" else [0.0])):
        base = dict(base, server_momentum=server_momentum)
        for model in common.words(a.baseline_models) if a.baseline else []:
            runs.append(dict(base, strategy=strategy, local_epochs=1, target_epsilon=math.inf, batch_size=32,
                             lr=0.05, dp_max_grad_norm=1.0, momentum=0.0, model=model, accountant="rdp"))
        for epochs in common.floats(a.epochs_list):
            for batch in common.floats(a.batch_sizes):
                for lr in common.floats(a.lrs):
                    for clip in common.floats(a.clips):
                        for momentum, model in ((m, v) for m in common.floats(a.momenta) for v in common.words(a.models)):
                            runs.append(dict(base, strategy=strategy, local_epochs=int(epochs),
                                             target_epsilon=a.epsilon, batch_size=int(batch), lr=lr,
                                             dp_max_grad_norm=clip, momentum=momentum, model=model))
    return runs


def run_name(s: dict) -> str:
    """The work folder of a run: every setting column that tells runs apart."""
    dp = not math.isinf(s["target_epsilon"])
    return (f"{s['dataset']}_a{s['alpha']:g}_s{s['seed']}_{s['strategy']}_eps{s['target_epsilon']:g}_e{s['local_epochs']}"
            f"_b{s['batch_size']}_lr{s['lr']:g}_c{s['dp_max_grad_norm']:g}_m{s['momentum']:g}"
            + (f"_{s['model']}" if s["model"] != ("dp" if dp else "default") else "")
            + (f"_sm{s['server_momentum']:g}" if s["server_momentum"] else "")
            + (f"_{s['accountant']}" if s["accountant"] != "rdp" else ""))


def run_one(setting: dict, a: argparse.Namespace) -> dict:
    """One ``bcsfl simulate`` of ``setting``; returns its privacy.csv row."""
    s = setting
    dp = not math.isinf(s["target_epsilon"])
    args = ["--strategy", s["strategy"], "--dataset", s["dataset"], "--num-clients", s["num_clients"],
            "--rounds", s["rounds"], "--local-epochs", s["local_epochs"], "--dirichlet-alpha", s["alpha"],
            "--seed", s["seed"], "--batch-size", s["batch_size"], "--lr", s["lr"], "--model", s["model"]]
    if s["momentum"]:
        args += ["--momentum", s["momentum"]]
    if s["server_momentum"]:
        args += ["--server-momentum", s["server_momentum"]]
    if dp:
        args += ["--target-epsilon", s["target_epsilon"], "--dp-max-grad-norm", s["dp_max_grad_norm"],
                 "--dp-accountant", s["accountant"]]
    ddir = common.data_dir(s["dataset"], a.data_dir)
    if ddir:
        args += ["--data-dir", ddir]
    name = run_name(s)
    metrics, seconds = common.simulate(args, Path(a.work_dir) / name, timeout=a.timeout, engine=a.engine,
                                       device=a.device, threads=a.threads)
    eps = ledger_epsilons(Path(a.work_dir) / name) if dp else [math.inf]
    noise = None
    if dp and s["strategy"] == "bcsfl":
        noise = _typical_noise(s, a)
    row = dict(s, dp_noise=noise if dp else 0, final_accuracy=metrics["final_accuracy"], seconds=seconds,
               accuracy_per_round=[round(r["accuracy"], 4) for r in metrics["rounds"]],
               epsilon_min=eps[0] if eps else None, epsilon_median=median(eps) if eps else None,
               epsilon_max=eps[-1] if eps else None,
               honest_rejected=common.rejection_rates(metrics, s["num_clients"])[1]
               if s["strategy"] in ("bcsfl", "fltrust") else None,
               machine=common.run_machine(a.engine, metrics.get("device", a.device), a.jobs, a.threads))
    return row


def _typical_noise(s: dict, a: argparse.Namespace) -> float:
    """The noise multiplier an average-sized client picks (each client picks its own)."""
    run = argparse.Namespace(dataset=s["dataset"], data_dir=a.data_dir, root_size=100, num_clients=s["num_clients"],
                             local_epochs=s["local_epochs"], rounds=s["rounds"], accountant=s["accountant"])
    return round(privacy_pruning._typical_noise(s["target_epsilon"], run, s["batch_size"]), 3)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", help="dataset folder (default $BCSFL_DATA_DIR/<dataset>)")
    p.add_argument("--num-clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--strategies", default="bcsfl", help="comma-separated (default bcsfl)")
    p.add_argument("--epsilon", type=float, default=3.0, help="each client's target epsilon over the run (default 3)")
    p.add_argument("--batch-sizes", default="128", help="comma-separated expected batch sizes (default 128)")
    p.add_argument("--lrs", default="2", help="comma-separated learning rates (default 2)")
    p.add_argument("--clips", default="1", help="comma-separated per-example clipping norms (default 1)")
    p.add_argument("--momenta", default="0", help="comma-separated SGD momenta (default 0)")
    p.add_argument("--server-momenta", default="0",
                   help="comma-separated betas of the committee's server momentum (default 0; bcsfl only)")
    p.add_argument("--models", default="dp",
                   help="comma-separated model variants of the DP runs: dp (tanh CNN, default), default (ReLU CNN) "
                        "or scatter (ScatterNet + linear)")
    p.add_argument("--accountant", default="rdp", choices=("rdp", "prv"),
                   help="how the clients account epsilon (default rdp; prv: a tighter bound, less noise)")
    p.add_argument("--epochs-list", default="1", help="comma-separated local epochs per round (default 1)")
    p.add_argument("--baseline", action="store_true", help="also run the setting without DP")
    p.add_argument("--baseline-models", default="default",
                   help="comma-separated model variants of the runs without DP (default: default, the ReLU CNN)")
    p.add_argument("--csv", default=str(common.RESULTS / "privacy.csv"))
    p.add_argument("--work-dir", default=str(common.RUNS / "dp_tuning"))
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    p.add_argument("--engine", default="inprocess", choices=("ray", "inprocess"))
    p.add_argument("--device", default="cpu", help="torch device of the clients (cpu, cuda)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own subprocess")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--merge", metavar="OTHER_CSV", help="copy into --csv the rows of OTHER_CSV it lacks, then stop")
    p.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    csv_path = Path(a.csv)
    if a.merge:
        added, skipped = common.merge_rows(csv_path, Path(a.merge), _key, FIELDS)
        print(f"merged {added} row(s) into {csv_path} ({skipped} already there or incomplete)")
        return 0
    done = {_key(r) for r in common.read_rows(csv_path)}
    todo = [s for s in plan(a) if _key(s) not in done]
    print(f"{len(todo)} run(s) to do; {common.run_machine(a.engine, a.device, a.jobs, a.threads)}", flush=True)
    if a.dry_run:
        for s in todo:
            print(" ", s)
        return 0
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {pool.submit(run_one, s, a): s for s in todo}
        for future in as_completed(futures):
            s = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
                failed += 1
                print(f"{s}: {exc}", file=sys.stderr, flush=True)
                continue
            common.append_row(csv_path, FIELDS, row)  # only this thread writes the CSV
            print(f"{s['strategy']} eps {s['target_epsilon']:g} e{s['local_epochs']} b{s['batch_size']} "
                  f"lr {s['lr']:g} clip {s['dp_max_grad_norm']:g} momentum {s['momentum']:g} server momentum "
                  f"{s['server_momentum']:g}: final "
                  f"{row['final_accuracy']:.4f}, eps max {row['epsilon_max']}, honest rejected "
                  f"{row['honest_rejected']} ({row['seconds']:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
