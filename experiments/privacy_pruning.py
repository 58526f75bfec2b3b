"""Accuracy against the privacy budget (DP-SGD) and against the pruning ratio.

    python -m experiments.privacy_pruning                      # digits, 10 clients, 5 rounds
    python -m experiments.privacy_pruning --dataset mnist --num-clients 20 --rounds 10
    python -m experiments.privacy_pruning --plot-only
    python -m experiments.privacy_pruning --dataset mnist --data-dir /work/shared/datasets/mnist \
        --num-clients 20 --rounds 10 --epsilons inf,3 --per-client --pruning-strategies none \
        --engine inprocess --threads 1                          # DP by --target-epsilon, DP model

``--per-client`` passes ``--target-epsilon`` to ``bcsfl simulate``: every client picks
the noise that spends exactly that budget on its own data over all rounds
(``bcsfl_flower.training.privacy.client_noise``), and the DP rows train the tanh "dp"
model with ``--dp-batch-size``/``--dp-lr``; the ``inf`` row is the default non-DP run.
Without ``--per-client`` (the older digits rows) one noise multiplier fits a typical client.

Every run is one ``bcsfl simulate`` with the same seed and partition; only ``--dp-noise``
or ``--prune`` changes. The noise multipliers are chosen with
``bcsfl_flower.training.privacy.noise_for_epsilon`` so that a *typical* client (the
average partition size, batch 32, one epoch a round) reaches epsilon 1, 3 or 8 at
delta 1e-5 after all rounds; the epsilon each client actually reached is read back
from the last ledger block (``data["epsilon"]``, the clients' signed reports), so
smaller and larger partitions show up as the min/max columns.

Pruning: the upload size per client and round is what the client's own
``PruneReport`` gives for this model at that ratio (sparse COO-like encoding, 8 bytes
per kept weight, biases dense), recomputed here with the same function on the model's
layout: ``metrics.json`` does not carry the replies' ``prune-bytes-saved``.

Outputs ``experiments/results/privacy.csv``, ``pruning.csv``, ``privacy.png``,
``pruning.png``. Rows already in a CSV are skipped.

``--dp-attacks ATTACKS`` (with ``--per-client``) runs the robustness slice with DP on
instead: BCS-FL, ``--dp-attack-fraction`` (0.3) of the clients running each attack, every
client at the first of ``--epsilons``; rows go to ``privacy_attacks.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from statistics import median

from . import common

PRIVACY_FIELDS = ("dataset", "num_clients", "rounds", "local_epochs", "alpha", "seed", "strategy", "target_epsilon", "dp_noise",
                  "dp_max_grad_norm", "epsilon_min", "epsilon_median", "epsilon_max", "final_accuracy",
                  "accuracy_per_round", "honest_rejected", "seconds", "batch_size", "lr", "model", "machine")
PRUNING_FIELDS = ("dataset", "num_clients", "rounds", "local_epochs", "alpha", "seed", "strategy", "prune", "final_accuracy",
                  "accuracy_per_round", "dense_bytes", "upload_bytes", "bytes_saved", "saved_fraction",
                  "total_upload_mb", "honest_rejected", "seconds")


def typical_client(a: argparse.Namespace) -> tuple[float, int]:
    """(Poisson sample rate, DP-SGD steps over the run) of an average-sized client."""
    from bcsfl_flower.data import load_dataset

    ds = load_dataset(a.dataset, common.data_dir(a.dataset, a.data_dir) or None)
    per_client = (len(ds.train_y) - a.root_size) / a.num_clients
    batches = max(1, math.ceil(per_client / a.batch_size))
    return 1.0 / batches, batches * a.local_epochs * a.rounds


def noise_for(target: float, a: argparse.Namespace) -> float:
    if math.isinf(target):
        return 0.0
    from bcsfl_flower.training.privacy import noise_for_epsilon

    q, steps = typical_client(a)
    return math.ceil(noise_for_epsilon(target, q, steps) * 100) / 100  # round up: stay within the target


def _typical_noise(target: float, a: argparse.Namespace, batch: int) -> float:
    """The noise an average-sized client picks for ``target`` (each client picks its own)."""
    from bcsfl_flower.data import load_dataset
    from bcsfl_flower.training.privacy import client_noise

    ds = load_dataset(a.dataset, common.data_dir(a.dataset, a.data_dir) or None)
    per_client = round((len(ds.train_y) - a.root_size) / a.num_clients)
    return client_noise(target, per_client, batch, a.local_epochs, a.rounds,
                        accountant=getattr(a, "accountant", "rdp"))


def upload_bytes(dataset: str, ratio: float) -> tuple[int, int, int]:
    """(dense, sparse upload, saved) bytes of one pruned client model, as the client reports."""
    from bcsfl_flower.training.pruning import magnitude_prune
    from bcsfl_flower.models import build_model

    report = magnitude_prune(build_model(dataset, seed=0), ratio)
    upload = report.sparse_bytes if report.bytes_saved > 0 else report.dense_bytes
    return report.dense_bytes, upload, report.bytes_saved


def _run(a: argparse.Namespace, name: str, extra: list, batch_size: int | None = None) -> tuple[dict, float, Path]:
    args = ["--strategy", a.strategy, "--dataset", a.dataset, "--num-clients", a.num_clients, "--rounds", a.rounds,
            "--local-epochs", a.local_epochs, "--dirichlet-alpha", a.alpha, "--seed", a.seed,
            "--root-size", a.root_size, "--batch-size", batch_size or a.batch_size, *extra]
    ddir = common.data_dir(a.dataset, a.data_dir)
    if ddir:
        args += ["--data-dir", ddir]
    out = Path(a.work_dir) / (f"{a.dataset}_n{a.num_clients}_r{a.rounds}_e{a.local_epochs}_a{a.alpha:g}_s{a.seed}"
                              f"_{a.strategy}_{name}")
    metrics, seconds = common.simulate(args, out, timeout=a.timeout, engine=a.engine, threads=a.threads)
    return metrics, seconds, out


def ledger_epsilons(out: Path) -> list[float]:
    from bcsfl_flower.ledger import open_ledger

    path = out / "ledger.db"
    if not path.is_file():
        return []
    ledger = open_ledger(f"sqlite:///{path}", create=False)
    try:
        return sorted(float(v) for v in ledger.latest().data.get("epsilon", {}).values())
    finally:
        ledger.close()


def _base(a: argparse.Namespace) -> dict:
    return dict(dataset=a.dataset, num_clients=a.num_clients, rounds=a.rounds, local_epochs=a.local_epochs,
                alpha=a.alpha, seed=a.seed, strategy=a.strategy)


def _done(path: Path, a: argparse.Namespace, column: str) -> set[float]:
    base = {k: str(v) for k, v in _base(a).items()}
    return {float(r[column]) for r in common.read_rows(path)
            if all(r[k] == base[k] or _num_eq(r[k], base[k]) for k in base)}


#: What a DP recipe column meant in rows written before the column existed (the defaults
#: then): an empty cell reads as this.
LEGACY_CELLS = {"dp_max_grad_norm": "1", "momentum": "0", "server_momentum": "0", "accountant": "rdp",
                "model": "dp"}


def cell(row: dict, column: str) -> str:
    """``row``'s cell in ``column``, an empty one read as :data:`LEGACY_CELLS` says."""
    return row.get(column) or LEGACY_CELLS.get(column, "")


def _same(value: str, want: str) -> bool:
    """Equal cells, as text or as numbers."""
    return value == want or _num_eq(value, want)


def _num_eq(x: str, y: str) -> bool:
    try:
        return math.isclose(float(x), float(y))
    except ValueError:
        return False


def sweep(a: argparse.Namespace) -> None:
    priv_csv, prune_csv = Path(a.privacy_csv), Path(a.pruning_csv)
    targets = [float(t) for t in a.epsilons.split(",")]
    ratios = common.floats(a.prunes)
    todo = []
    for kind, strategies, path, column, values in (
        ("privacy", a.privacy_strategies, priv_csv, "target_epsilon", targets),
        ("pruning", a.pruning_strategies, prune_csv, "prune", ratios),
    ):
        for strategy in common.words(strategies):
            done = _done(path, argparse.Namespace(**{**vars(a), "strategy": strategy}), column)
            todo += [(kind, strategy, v) for v in values if v not in done]
    print(f"{len(todo)} run(s) to do; {common.machine()}")
    if todo:
        q, steps = typical_client(a)
        print(f"typical client: sample rate {q:.4f}, {steps} DP-SGD steps over {a.rounds} rounds")
    for kind, a.strategy, value in common.progress(todo, len(todo), "privacy/pruning"):
        batch, lr, model = a.batch_size, 0.05, "default"
        if kind == "privacy" and a.per_client:
            dp = not math.isinf(value)
            batch, lr, model = (a.dp_batch_size, a.dp_lr, "dp") if dp else (a.batch_size, 0.05, "default")
            sigma = _typical_noise(value, a, batch) if dp else 0.0  # for the table; each client picks its own
            extra = ["--target-epsilon", value, "--dp-max-grad-norm", a.dp_max_grad_norm, "--lr", lr] if dp else []
            metrics, seconds, out = _run(a, f"eps{value:g}_b{batch}_lr{lr:g}", extra, batch)
        elif kind == "privacy":
            sigma = noise_for(value, a)
            extra = ["--dp-noise", sigma, "--dp-max-grad-norm", a.dp_max_grad_norm] if sigma > 0 else []
            metrics, seconds, out = _run(a, f"dp{sigma:g}", extra)
        if kind == "privacy":
            eps = ledger_epsilons(out)
            if not eps:  # no DP: infinite; DP without a ledger (not bcsfl): unknown (empty cells)
                eps = [math.inf] if sigma == 0 else [None]
            row = dict(_base(a), target_epsilon=value, dp_noise=round(sigma, 3), dp_max_grad_norm=a.dp_max_grad_norm,
                       batch_size=batch, lr=lr, model=model, machine=common.run_machine(a.engine, "cpu", 1, a.threads),
                       epsilon_min=eps[0], epsilon_median=eps[len(eps) // 2] if None in eps else median(eps),
                       epsilon_max=eps[-1])
            path, fields = priv_csv, PRIVACY_FIELDS
            label = f"{a.strategy} target eps {value:g}: noise {sigma:g}, eps reached {_g(eps[0])}..{_g(eps[-1])}"
        else:
            metrics, seconds, out = _run(a, f"prune{value:g}", ["--prune", value] if value > 0 else [])
            dense, upload, saved = upload_bytes(a.dataset, value)
            row = dict(_base(a), prune=value, dense_bytes=dense, upload_bytes=upload, bytes_saved=saved,
                       saved_fraction=saved / dense, total_upload_mb=upload * a.num_clients * a.rounds / 1e6)
            path, fields = prune_csv, PRUNING_FIELDS
            label = f"{a.strategy} prune {value:g}: upload {upload} B of {dense} B per client-round"
        row.update(final_accuracy=metrics["final_accuracy"], seconds=seconds,
                   accuracy_per_round=[round(r["accuracy"], 4) for r in metrics["rounds"]],
                   honest_rejected=common.rejection_rates(metrics, a.num_clients)[1]
                   if a.strategy in ("bcsfl", "fltrust") else None)
        common.append_row(path, fields, row)
        print(f"\n{label}; final accuracy {metrics['final_accuracy']:.4f} ({seconds:.0f}s)", flush=True)


ATTACK_FIELDS = ("dataset", "num_clients", "rounds", "local_epochs", "alpha", "seed", "strategy", "target_epsilon",
                 "malicious_fraction", "attack", "final_accuracy", "accuracy_per_round", "malicious_rejected",
                 "honest_rejected", "epsilon_max", "batch_size", "lr", "seconds", "machine", "dp_max_grad_norm",
                 "server_momentum", "accountant", "model")


def attack_sweep(a: argparse.Namespace) -> None:
    """BCS-FL under each attack with every client on DP-SGD at ``--epsilons``' first target."""
    path, target = Path(a.attacks_csv), float(a.epsilons.split(",")[0])
    recipe = dict(batch_size=a.dp_batch_size, lr=a.dp_lr, dp_max_grad_norm=a.dp_max_grad_norm,
                  server_momentum=a.server_momentum, accountant=a.accountant, model=a.dp_model)
    base = {k: str(v) for k, v in dict(_base(a), target_epsilon=target, **recipe).items()}
    done = {r["attack"] for r in common.read_rows(path) if all(_same(cell(r, k), base[k]) for k in base)}
    todo = [x for x in common.words(a.dp_attacks) if x not in done]
    print(f"{len(todo)} DP attack run(s) to do at eps {target:g}; {common.machine()}")
    for attack in todo:
        fraction = 0.0 if attack == "none" else a.dp_attack_fraction
        extra = ["--target-epsilon", target, "--dp-max-grad-norm", a.dp_max_grad_norm, "--lr", a.dp_lr,
                 "--malicious-fraction", fraction, "--attack", attack, "--server-momentum", a.server_momentum,
                 "--dp-accountant", a.accountant, "--model", a.dp_model]
        name = (f"eps{target:g}_{attack}_f{fraction:g}_b{a.dp_batch_size}_lr{a.dp_lr:g}_c{a.dp_max_grad_norm:g}"
                f"_sm{a.server_momentum:g}_{a.accountant}_{a.dp_model}")
        metrics, seconds, out = _run(a, name, extra, a.dp_batch_size)
        caught, honest = common.rejection_rates(metrics, a.num_clients)
        eps = ledger_epsilons(out)
        common.append_row(path, ATTACK_FIELDS, dict(
            _base(a), target_epsilon=target, malicious_fraction=fraction, attack=attack,
            final_accuracy=metrics["final_accuracy"], accuracy_per_round=[round(r["accuracy"], 4) for r in metrics["rounds"]],
            malicious_rejected=caught, honest_rejected=honest, epsilon_max=eps[-1] if eps else None,
            **recipe, seconds=seconds,
            machine=common.run_machine(a.engine, "cpu", 1, a.threads)))
        print(f"\n{attack} at eps {target:g}: final accuracy {metrics['final_accuracy']:.4f}, malicious rejected "
              f"{caught:.2f}, honest rejected {honest:.2f} ({seconds:.0f}s)", flush=True)


def _g(cell: str) -> str:
    """A CSV number cell, short; '?' when empty (unknown)."""
    return f"{float(cell):.3g}" if cell not in ("", None) else "?"


#: The DP recipes the privacy plot draws: (label, the columns a DP row must have; its
#: no-DP row must share the server momentum). Empty cells read as :data:`LEGACY_CELLS`.
RECIPES = (
    ("now: ScatterNet + linear (--model auto), batch 256, lr 4, clip 0.5, server momentum 0.5, PRV",
     dict(model="scatter", batch_size="256", lr="4", dp_max_grad_norm="0.5", server_momentum="0.5",
          accountant="prv")),
    ("reworked: ReLU CNN, batch 256, lr 4, clip 0.5, server momentum 0.5, PRV",
     dict(model="default", batch_size="256", lr="4", dp_max_grad_norm="0.5", server_momentum="0.5",
          accountant="prv")),
    ("before: tanh CNN, batch 128, lr 2, clip 1, no server momentum, RDP",
     dict(model="dp", batch_size="128", lr="2", dp_max_grad_norm="1", server_momentum="0", accountant="rdp")),
)


def _in_recipe(row: dict, recipe: dict) -> bool:
    """Whether ``row`` (a privacy.csv row) belongs to ``recipe``'s curve."""
    if not _num_eq(cell(row, "momentum"), "0"):
        return False
    if math.isinf(float(row["target_epsilon"])):  # every curve ends at the default client without DP
        return _num_eq(cell(row, "server_momentum"), recipe["server_momentum"]) and cell(row, "model") == "default"
    return all(_same(cell(row, k), v) for k, v in recipe.items())


def plot(a: argparse.Namespace) -> None:
    plt = common.plt()
    outdir = Path(a.plots)
    base = {k: str(v) for k, v in _base(a).items() if k != "strategy"}
    setting = f"{a.dataset}, {a.num_clients} clients, {a.rounds} rounds x {a.local_epochs} epoch(s), seed {a.seed}"

    def mine(path: Path, column: str) -> dict[str, list[dict]]:
        by = {}
        for r in common.read_rows(path):
            if all(r[k] == base[k] or _num_eq(r[k], base[k]) for k in base):
                by.setdefault(r["strategy"], []).append(r)
        return {k: sorted(v, key=lambda r: float(r[column])) for k, v in sorted(by.items())}

    priv = {label: rs for label, rs in ((label, [r for r in mine(Path(a.privacy_csv), "target_epsilon")
                                                     .get("bcsfl", []) if _in_recipe(r, recipe)])
                                        for label, recipe in RECIPES) if rs}
    if priv:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        targets = sorted({float(r["target_epsilon"]) for rs in priv.values() for r in rs})
        pos = {t: i for i, t in enumerate(targets)}
        for i, (label, rs) in enumerate(priv.items()):
            xs = [pos[float(r["target_epsilon"])] for r in rs]
            ys = [float(r["final_accuracy"]) for r in rs]
            ax.plot(xs, ys, "o-", lw=2, label=f"BCS-FL, {label}")
            for x, y in zip(xs, ys):  # the first curve's figures above its points, the next ones below
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6 if i == 0 else -13),
                            ha="center", fontsize=8)
        ax.set_xticks(range(len(targets)), ["no DP\n(eps = inf)" if math.isinf(t) else f"eps {t:g}" for t in targets],
                      fontsize=8)
        ax.set_ylabel("final test accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"DP-SGD per client (delta 1e-5): {setting}", fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "privacy.png", dpi=110)
        plt.close(fig)
        print(f"wrote {outdir / 'privacy.png'}")
        for label, rs in priv.items():
            for r in rs:
                print(f"  {label[:40]:40s} target eps {r['target_epsilon']:>4s}  noise {r['dp_noise']:>5s}  eps reached "
                      f"{_g(r['epsilon_min'])}..{_g(r['epsilon_max'])}  final accuracy {float(r['final_accuracy']):.4f}  "
                      f"honest rejected {r['honest_rejected'] or '-'}")
    prune = mine(Path(a.pruning_csv), "prune")
    if prune:
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        ax2 = ax.twinx()
        for i, (strategy, rs) in enumerate(prune.items()):
            xs = [float(r["prune"]) for r in rs]
            ax.plot(xs, [float(r["final_accuracy"]) for r in rs], "o-", lw=2, color=f"C{i}",
                    label=f"{strategy}: accuracy")
        first = next(iter(prune.values()))
        ax2.plot([float(r["prune"]) for r in first], [int(r["upload_bytes"]) / 1024 for r in first], "s--",
                 color="0.4", label="upload per client-round")
        ax.set_xlabel("pruning ratio (fraction of weights zeroed)")
        ax.set_ylabel("final test accuracy")
        ax.set_ylim(0, 1.05)
        ax2.set_ylabel("upload per client per round (KiB)")
        ax2.set_ylim(0, None)
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
        ax.set_title(f"magnitude pruning: {setting}", fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "pruning.png", dpi=110)
        plt.close(fig)
        print(f"wrote {outdir / 'pruning.png'}")
        for strategy, rs in prune.items():
            for r in rs:
                print(f"  {strategy:7s} prune {r['prune']:>4s}  upload {r['upload_bytes']} B of {r['dense_bytes']} B "
                      f"(saved {float(r['saved_fraction']):.0%})  final accuracy {float(r['final_accuracy']):.4f}  "
                      f"honest rejected {r['honest_rejected'] or '-'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir",
                        help="dataset folder (default $BCSFL_DATA_DIR/<dataset>, "
                             "else ~/.cache/bcsfl/datasets/<dataset>, downloaded when online)")
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--privacy-strategies", default="bcsfl", help="bcsfl records each client's epsilon on its ledger")
    p.add_argument("--pruning-strategies", default="bcsfl,fedavg")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--root-size", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epsilons", default="1,3,8,inf", help="target epsilons of a typical client over the run")
    p.add_argument("--dp-max-grad-norm", type=float, default=1.0)
    p.add_argument("--per-client", action="store_true",
                   help="DP by --target-epsilon (each client's own noise), DP model and --dp-batch-size/--dp-lr")
    p.add_argument("--dp-batch-size", type=int, default=128, help="with --per-client: DP rows' batch size")
    p.add_argument("--dp-lr", type=float, default=2.0, help="with --per-client: DP rows' learning rate")
    p.add_argument("--server-momentum", type=float, default=0.0,
                   help="with --dp-attacks: the committee's server momentum (default 0)")
    p.add_argument("--accountant", default="rdp", choices=("rdp", "prv"),
                   help="with --dp-attacks: how the clients account epsilon (default rdp)")
    p.add_argument("--dp-model", default="dp", choices=("dp", "default", "scatter"),
                   help="with --dp-attacks: the model variant the DP clients train (default dp, the tanh CNN; "
                        "default: the ReLU CNN; scatter: ScatterNet + linear)")
    p.add_argument("--dp-attacks", default="", help="with --per-client: attacks to run with DP on (e.g. label-flip,ipm)")
    p.add_argument("--dp-attack-fraction", type=float, default=0.3, help="share of attacking clients (default 0.3)")
    p.add_argument("--attacks-csv", default=str(common.RESULTS / "privacy_attacks.csv"))
    p.add_argument("--engine", default="ray", choices=("ray", "inprocess"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prunes", default="0,0.5,0.7,0.9", help="pruning ratios")
    p.add_argument("--privacy-csv", default=str(common.RESULTS / "privacy.csv"))
    p.add_argument("--pruning-csv", default=str(common.RESULTS / "pruning.csv"))
    p.add_argument("--plots", default=str(common.RESULTS))
    p.add_argument("--work-dir", default=str(common.RUNS / "privacy_pruning"))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--plot-only", action="store_true")
    a = p.parse_args(argv)
    if not a.plot_only:  # first: without the data, one line and exit 2
        a.data_dir = common.data_dir(a.dataset, a.data_dir) or None
    a.strategy = "bcsfl"
    Path(a.plots).mkdir(parents=True, exist_ok=True)
    if not a.plot_only and a.dp_attacks:
        attack_sweep(a)
        return 0
    if not a.plot_only:
        sweep(a)
    plot(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
