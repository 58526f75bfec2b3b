"""Committee in the ServerApp vs on client nodes vs plain FedAvg: same models? what cost?

    python -m experiments.committee_modes --num-clients 20 --rounds 5

Runs ``bcsfl simulate`` with ``--committee server``, ``--committee nodes`` and FedAvg on the
same seed, checks that both committees commit the same global-model hash every round, and
prints per-round bytes on the wire and seconds per round. Bytes: the train download and
upload of every client (as FedAvg), plus with the committee on nodes the relay's messages to
and from the members (``bytes_moved``), each client's upload of its package to the ledger
(it pools its own; one model's bytes each) and what the members read from their ledgers'
model stores (the pooled updates and the certified model, ``bytes_fetched``). In this
simulation every node reads one shared SQLite file, so the reads cost no network; on a
cluster each member reads from a ledger node.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .common import data_dir, run_fresh


def run(out: Path, extra: list[str], common: list[str], name: str) -> dict:
    if run_fresh([*common, *extra], out / name, out / f"{name}.log"):  # a failed run leaves out/name as it was
        sys.exit(f"{name} failed; see {out / name}.log")
    return json.loads((out / name / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default="",
                        help="dataset folder (default $BCSFL_DATA_DIR/<dataset>, "
                             "else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default="experiments/results/committee_modes")
    args = parser.parse_args()
    data = data_dir(args.dataset, args.data_dir)  # first: without the data, one line and exit 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--num-clients", str(args.num_clients), "--rounds", str(args.rounds),
              "--seed", str(args.seed), "--malicious-fraction", "0.2", "--attack", "sign-flip"]
    if data:
        common += ["--data-dir", data]
    from bcsfl_flower.models import build_model

    model_bytes = sum(p.numel() * 4 for p in build_model(args.dataset).state_dict().values())
    train_bytes = 2 * args.num_clients * model_bytes  # every client downloads and uploads the model
    runs = {
        "server": run(out, ["--strategy", "bcsfl", "--committee", "server"], common, "server"),
        "nodes": run(out, ["--strategy", "bcsfl", "--committee", "nodes"], common, "nodes"),
        "fedavg": run(out, ["--strategy", "fedavg"], common, "fedavg"),
    }
    same = [r["model_hash"] for r in runs["server"]["rounds"]] == [r["model_hash"] for r in runs["nodes"]["rounds"]]
    summary = {"model_bytes": model_bytes, "same_hashes_every_round": same}
    print(f"model {model_bytes} bytes; {args.num_clients} clients; same global-model hash every round: {same}")
    print(f"{'mode':8s} {'final_acc':>9s} {'bytes/round':>12s} {'x fedavg':>8s} {'s/round':>8s} {'x fedavg':>8s}")
    fedavg_s = float(np.mean([r["seconds"] for r in runs["fedavg"]["rounds"]]))
    parts_of = {}
    for name, m in runs.items():
        relay = float(np.mean([r.get("bytes_moved") or 0 for r in m["rounds"]]))
        reads = float(np.mean([r.get("bytes_fetched") or 0 for r in m["rounds"]]))
        uploads = args.num_clients * model_bytes if name == "nodes" else 0.0  # each client pools its own package
        per_round = train_bytes + relay + uploads + reads
        secs = float(np.mean([r["seconds"] for r in m["rounds"]]))
        parts_of[name] = (relay, uploads, reads)
        summary[name] = {"final_accuracy": m["final_accuracy"], "bytes_per_round": per_round,
                         "relay_member_bytes": relay, "ledger_upload_bytes": uploads, "ledger_read_bytes": reads,
                         "seconds_per_round": secs}
        print(f"{name:8s} {m['final_accuracy']:9.4f} {per_round:12.0f} {per_round / train_bytes:8.2f} "
              f"{secs:8.2f} {secs / fedavg_s:8.2f}")
    print("bytes per round beyond FedAvg's train traffic: relay<->members, client uploads to the ledger, "
          "members' reads from the ledger")
    for name, (relay, uploads, reads) in parts_of.items():
        print(f"{name:8s} {relay:12.0f} {uploads:12.0f} {reads:12.0f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
