"""What BCS-FL costs per round: server stages against FedAvg's round time.

    python -m experiments.overhead                              # digits, 20 and 50 clients, 4 rounds
    python -m experiments.overhead --dataset mnist --clients 20 --rounds 3
    python -m experiments.overhead --plot-only

Runs BCS-FL and FedAvg with the same seed and data for each client count and records,
per round, from ``metrics.json``: ``seconds`` (the whole round: dispatch, client
training in the simulation engine, aggregation, central evaluation), ``aggregate_seconds``
(the strategy's ``aggregate_train``; for BCS-FL the server-side work) and BCS-FL's
``stages`` (verify, pos_draw, filter_aggregate, agreement, ledger_commit). Round 1
also pays the simulation engine's start-up, so the summary averages rounds 2.. only.

Outputs ``experiments/results/overhead.csv`` (one row per strategy, client count and
round) and ``overhead_<dataset>.png`` (stacked bars of the mean steady-state round).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

from . import common

STAGES = ("verify", "pos_draw", "filter_aggregate", "agreement", "ledger_commit")
FIELDS = ("dataset", "strategy", "num_clients", "rounds", "seed", "round", "seconds", "aggregate_seconds",
          *STAGES, "server_other", "final_accuracy")


def run(a: argparse.Namespace, strategy: str, clients: int) -> list[dict]:
    args = ["--strategy", strategy, "--dataset", a.dataset, "--num-clients", clients, "--rounds", a.rounds,
            "--seed", a.seed]
    ddir = common.data_dir(a.dataset, a.data_dir)
    if ddir:
        args += ["--data-dir", ddir]
    out = Path(a.work_dir) / f"{a.dataset}_{strategy}_n{clients}_r{a.rounds}_s{a.seed}"
    metrics, _ = common.simulate(args, out, timeout=a.timeout)
    rows = []
    for r in metrics["rounds"]:
        stages = r.get("stages") or {}
        agg = r.get("aggregate_seconds") or 0.0
        row = dict(dataset=a.dataset, strategy=strategy, num_clients=clients, rounds=a.rounds, seed=a.seed,
                   round=r["round"], seconds=r["seconds"], aggregate_seconds=agg,
                   final_accuracy=metrics["final_accuracy"])
        for s in STAGES:
            row[s] = stages.get(s, 0.0)
        row["server_other"] = max(0.0, agg - sum(stages.get(s, 0.0) for s in STAGES))
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """{(strategy, clients): mean of each column over rounds >= 2 (all rounds if only one)}."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["strategy"], int(r["num_clients"]))].append(r)
    out = {}
    for key, rs in groups.items():
        steady = [r for r in rs if int(r["round"]) >= 2] or rs
        out[key] = {c: mean(float(r[c]) for r in steady) for c in ("seconds", "aggregate_seconds", *STAGES,
                                                                    "server_other")}
        out[key]["rounds_averaged"] = len(steady)
    return out


def report(rows: list[dict], outdir: Path, dataset: str) -> None:
    s = summary(rows)
    for clients in sorted({k[1] for k in s}):
        b, f = s.get(("bcsfl", clients)), s.get(("fedavg", clients))
        for name, m in (("bcsfl", b), ("fedavg", f)):
            if m:
                stages = "  ".join(f"{st} {m[st] * 1000:.0f}ms" for st in STAGES) if name == "bcsfl" else ""
                print(f"{clients} clients {name:7s} round {m['seconds']:.2f}s  server (aggregate_train) "
                      f"{m['aggregate_seconds'] * 1000:.0f}ms  {stages}  [{m['rounds_averaged']} rounds]")
        if b and f:
            print(f"{clients} clients: BCS-FL server-side time / FedAvg round time = "
                  f"{b['aggregate_seconds'] / f['seconds']:.3f}; BCS-FL round / FedAvg round = "
                  f"{b['seconds'] / f['seconds']:.2f}; BCS-FL server / FedAvg server = "
                  f"{b['aggregate_seconds'] / max(f['aggregate_seconds'], 1e-9):.0f}x")
    plot(s, outdir, dataset)


def plot(s: dict, outdir: Path, dataset: str) -> None:
    plt = common.plt()
    keys = sorted(s, key=lambda k: (k[1], k[0] != "fedavg"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{k[0]}\n{k[1]} clients" for k in keys]
    x = range(len(keys))
    # Left: the whole round, split into the strategy's aggregate_train and everything else.
    rest = [s[k]["seconds"] - s[k]["aggregate_seconds"] for k in keys]
    agg = [s[k]["aggregate_seconds"] for k in keys]
    ax1.bar(x, rest, color="0.75", label="clients + dispatch + evaluation")
    ax1.bar(x, agg, bottom=rest, color="C3", label="aggregate_train (server)")
    ax1.set_xticks(list(x), labels, fontsize=8)
    ax1.set_ylabel("seconds per round (mean, rounds >= 2)")
    ax1.set_title("whole round", fontsize=9)
    ax1.legend(fontsize=7)
    # Right: the server side only, BCS-FL split by stage.
    bottom = [0.0] * len(keys)
    for i, st in enumerate((*STAGES, "server_other")):
        vals = [s[k][st] * 1000 if k[0] == "bcsfl" else (s[k]["aggregate_seconds"] * 1000 if st == "server_other" else 0)
                for k in keys]
        ax2.bar(x, vals, bottom=bottom, color=f"C{i}", label=st if st != "server_other" else "other / FedAvg aggregate")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_xticks(list(x), labels, fontsize=8)
    ax2.set_ylabel("milliseconds per round")
    ax2.set_title("server side (aggregate_train) by stage", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.suptitle(f"{dataset}: mean round (rounds >= 2)", fontsize=9)
    fig.tight_layout()
    path = outdir / f"overhead_{dataset}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir",
                        help="dataset folder (default $BCSFL_DATA_DIR/<dataset>, "
                             "else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    p.add_argument("--clients", default="20,50", help="client counts")
    p.add_argument("--strategies", default="bcsfl,fedavg")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--csv", default=str(common.RESULTS / "overhead.csv"))
    p.add_argument("--plots", default=str(common.RESULTS))
    p.add_argument("--work-dir", default=str(common.RUNS / "overhead"))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--plot-only", action="store_true")
    a = p.parse_args(argv)
    if not a.plot_only:  # first: without the data, one line and exit 2
        a.data_dir = common.data_dir(a.dataset, a.data_dir) or None
    csv_path, outdir = Path(a.csv), Path(a.plots)
    outdir.mkdir(parents=True, exist_ok=True)
    if not a.plot_only:
        done = {(r["dataset"], r["strategy"], int(r["num_clients"]), int(r["rounds"]), int(r["seed"]))
                for r in common.read_rows(csv_path)}
        todo = [(k, int(c)) for c in common.words(a.clients) for k in common.words(a.strategies)
                if (a.dataset, k, int(c), a.rounds, a.seed) not in done]
        print(f"{len(todo)} run(s) to do; {common.machine()}")
        for strategy, clients in common.progress(todo, len(todo), "overhead"):
            for row in run(a, strategy, clients):
                common.append_row(csv_path, FIELDS, row)
    rows = [r for r in common.read_rows(csv_path) if r["dataset"] == a.dataset and int(r["rounds"]) == a.rounds
            and int(r["seed"]) == a.seed]
    if not rows:
        print(f"no rows for {a.dataset} in {csv_path}")
        return 1
    report(rows, outdir, a.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
