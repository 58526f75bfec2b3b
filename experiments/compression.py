"""Upload compression with error feedback (issue #15): accuracy against bytes uploaded, and under attack.

    python -m experiments.compression --data-dir /work/shared/datasets/mnist \\
        --engine inprocess --jobs 2 --threads 1          # the committed grid (about 30 min on 2 cores)
    python -m experiments.compression --dry-run           # the cells still to run, and their bytes

Top-k sparsification of the update with the residual kept in the client's
``context.state`` (Lin et al., Deep Gradient Compression, ICLR 2018; Sattler et al.,
Sparse Ternary Compression, 2019; :mod:`bcsfl_flower.compression`). Each cell is one
``bcsfl simulate`` run, the harness of :mod:`experiments.robustness` (MNIST, 20 clients,
Dirichlet alpha 0.5, 10 rounds, 1 local epoch, lr 0.05, seed 7, BCS-FL):

* the budget: dense (``compression none``), top-k 13% int8 (9.8% of the dense bytes),
  top-k 1.18% int8 and top-k 1.58% ternary (both 0.99%), without attack;
* the robustness slice: the ~10x setting under the seven attacks at 30% malicious.

``upload_fraction`` is bytes uploaded / dense bytes, both the size of the reply's
ArrayRecord as Flower serialises it into the message
(:func:`bcsfl_flower.compression.payload_bytes`; the client reports the same figure as
its ``upload-bytes`` metric). A top-k upload's size depends only on ``k``, so it is the
same for every client and round. Rows go to ``experiments/results/compression.csv``;
cells already there are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import common
from .robustness import ATTACKS

FIELDS = ("dataset", "alpha", "compression", "topk_fraction", "quantize_bits", "malicious_fraction", "attack",
          "strategy", "seed", "num_clients", "rounds", "upload_fraction", "bytes_per_client_round",
          "dense_bytes_per_client_round", "final_accuracy", "accuracy_per_round", "seconds", "malicious_rejected",
          "honest_rejected", "refused_encodings", "machine")
#: (compression, top-k fraction, bits) of the budget cells; the second is the attack slice's ~10x.
BUDGET = (("none", 0.0, 0), ("topk", 0.13, 8), ("topk", 0.0118, 8), ("topk", 0.0158, 2))
UNDER_ATTACK = ("topk", 0.13, 8)


def upload_bytes(dataset: str, compression: str, fraction: float, bits: int) -> tuple[int, int]:
    """(bytes a client uploads per round, dense bytes) as Flower serialises the reply's ArrayRecord."""
    from bcsfl_flower.compression import encoded_size, payload_bytes, to_record
    from bcsfl_flower.models import build_model
    from bcsfl_flower.package import numpy_to_arrays
    from bcsfl_flower.training.train import get_weights

    weights = get_weights(build_model(dataset))
    dense = payload_bytes(numpy_to_arrays(weights))
    if compression == "none":
        return dense, dense
    n = sum(int(t.size) for t in weights.values())
    k = min(n, max(1, math.ceil(fraction * n)))  # as bcsfl_flower.compression.compress picks it
    # Under 65536 values no index gap needs a bridge: every client's upload has this size.
    assert n < 65536, "bridged encodings vary in size: measure them per client"
    return payload_bytes(to_record(bytes(encoded_size(k, bits)))), dense


def plan(a: argparse.Namespace) -> list[tuple]:
    """(compression, fraction, bits, malicious fraction, attack) of every cell, budget first."""
    cells = [(*c, 0.0, "none") for c in BUDGET]
    return cells + [(*UNDER_ATTACK, a.fraction, attack) for attack in common.words(a.attacks)]


def _key(r: dict) -> tuple:
    return (r["compression"], round(float(r["topk_fraction"] or 0), 6), int(r["quantize_bits"] or 0),
            round(float(r["malicious_fraction"]), 6), r["attack"])


def run_one(cell: tuple, a: argparse.Namespace) -> dict:
    compression, fraction, bits, malicious, attack = cell
    name = f"mnist_a{a.alpha:g}_{compression}{fraction:g}_q{bits}_f{malicious:g}_{attack}_s{a.seed}"
    args = ["--strategy", "bcsfl", "--dataset", a.dataset, "--num-clients", a.num_clients, "--rounds", a.rounds,
            "--dirichlet-alpha", a.alpha, "--seed", a.seed, "--malicious-fraction", malicious, "--attack", attack,
            "--local-epochs", 1, "--lr", 0.05, "--compression", compression]
    if compression != "none":
        args += ["--topk-fraction", fraction, "--quantize-bits", bits]
    ddir = common.data_dir(a.dataset, a.data_dir)
    if ddir:
        args += ["--data-dir", ddir]
    metrics, seconds = common.simulate(args, Path(a.work_dir) / name, timeout=a.timeout, engine=a.engine,
                                       threads=a.threads)
    sent, dense = upload_bytes(a.dataset, compression, fraction, bits)
    mal, honest = common.rejection_rates(metrics, a.num_clients)
    refused = sum(1 for r in metrics["rounds"] for why in (r.get("rejections") or {}).values()
                  if "compressed" in str(why))
    return dict(dataset=a.dataset, alpha=a.alpha, compression=compression, topk_fraction=fraction,
                quantize_bits=bits, malicious_fraction=malicious, attack=attack, strategy="bcsfl", seed=a.seed,
                num_clients=a.num_clients, rounds=a.rounds, upload_fraction=sent / dense,
                bytes_per_client_round=sent, dense_bytes_per_client_round=dense,
                final_accuracy=metrics["final_accuracy"],
                accuracy_per_round=[round(r["accuracy"], 4) for r in metrics["rounds"]], seconds=seconds,
                malicious_rejected=mal, honest_rejected=honest, refused_encodings=refused,
                machine=common.run_machine(a.engine, metrics.get("device", "cpu"), a.jobs, a.threads))


def summary(rows: list[dict]) -> str:
    """Cost against dense per budget, and the worst attack against clean at the ~10x setting."""
    clean = [r for r in rows if r["attack"] == "none"]
    dense = [float(r["final_accuracy"]) for r in clean if r["compression"] == "none"]
    lines = []
    for r in sorted(clean, key=lambda r: -float(r["upload_fraction"])):
        cost = f", cost {100 * (max(dense) - float(r['final_accuracy'])):+.2f} pts" if dense else ""
        lines.append(f"{r['compression']} {float(r['topk_fraction'] or 0):g} q{r['quantize_bits']}: "
                     f"{r['bytes_per_client_round']} B/client/round ({float(r['upload_fraction']):.2%} of dense), "
                     f"accuracy {float(r['final_accuracy']):.4f}{cost}, honest rejected "
                     f"{float(r['honest_rejected'] or 0):.1%}")
    c, f, b = UNDER_ATTACK
    slice_ = [r for r in rows if (r["compression"], float(r["topk_fraction"] or 0), int(r["quantize_bits"] or 0))
              == (c, f, b)]
    attacked = [r for r in slice_ if r["attack"] != "none"]
    base = [float(r["final_accuracy"]) for r in slice_ if r["attack"] == "none"]
    if attacked and base:
        worst = min(attacked, key=lambda r: float(r["final_accuracy"]))
        lines.append(f"under attack ({len(attacked)} attacks at {float(worst['malicious_fraction']):.0%}, top-k {f:g}): "
                     f"worst {worst['attack']} {float(worst['final_accuracy']):.4f} vs clean {base[0]:.4f} "
                     f"({100 * (float(worst['final_accuracy']) - base[0]):+.2f} pts)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", help="dataset folder (default: $BCSFL_DATA_DIR/<dataset> or the cache)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--num-clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.3, help="malicious fraction of the attack slice")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated ('' for the budget only)")
    p.add_argument("--csv", default=str(common.RESULTS / "compression.csv"))
    p.add_argument("--work-dir", default=str(common.RUNS / "compression"), help="run folders (metrics, logs)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one run is abandoned")
    p.add_argument("--engine", choices=("ray", "inprocess"), default="ray")
    p.add_argument("--jobs", type=int, default=1, help="cells run at a time, each its own subprocess")
    p.add_argument("--threads", type=int, help="torch threads per cell (default 1 per client)")
    p.add_argument("--dry-run", action="store_true", help="list the cells still to run, with their bytes")
    a = p.parse_args(argv)
    csv_path = Path(a.csv)
    rows = common.read_rows(csv_path)
    done = {_key(r) for r in rows if r["dataset"] == a.dataset and abs(float(r["alpha"]) - a.alpha) < 1e-9}
    todo = [c for c in plan(a) if (c[0], round(c[1], 6), c[2], round(c[3], 6), c[4]) not in done]
    for c in todo if a.dry_run else ():
        sent, dense = upload_bytes(a.dataset, *c[:3])
        print(f"{c}: {sent} of {dense} bytes ({sent / dense:.2%})")
    if a.dry_run:
        return 0
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {pool.submit(run_one, c, a): c for c in todo}
        for future in common.progress(as_completed(futures), len(todo), f"compression ({a.jobs} at a time)"):
            try:
                row = future.result()
            except Exception as err:  # noqa: BLE001 - one failed cell does not stop the others
                print(f"{futures[future]} failed: {err}", file=sys.stderr)
                failed += 1
                continue
            common.append_row(csv_path, FIELDS, row)
            print(json.dumps({k: row[k] for k in ("compression", "topk_fraction", "quantize_bits", "attack",
                                                  "upload_fraction", "final_accuracy", "honest_rejected")}),
                  flush=True)
    print(summary(common.read_rows(csv_path)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
