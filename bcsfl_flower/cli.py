"""The ``bcsfl`` command: ``simulate`` a run; ``ledger``: found (init, enrol), serve (up, serve),
show and verify a chain."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .client.attacks import ATTACKS
from .data import DATASETS
from .ledger import cli as ledger_cli
from .settings import STRATEGIES, RunSettings

__all__ = ["main"]


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a Flower simulation of BCS-FL or a baseline")
    d = RunSettings()
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="digits needs no files; others read --data-dir")
    p.add_argument("--data-dir", default=d.data_dir, help="folder with the dataset's standard files")
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=d.num_server_rounds)
    p.add_argument("--local-epochs", type=int, default=d.local_epochs)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dirichlet-alpha", type=float, default=d.dirichlet_alpha)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--malicious-fraction", type=float, default=d.malicious_fraction)
    p.add_argument("--attack", choices=ATTACKS, default=d.attack)
    p.add_argument("--attack-scale", type=float, default=d.attack_scale,
                   help="sign-flip/scaling factor, Gaussian std multiple, IPM epsilon")
    p.add_argument("--dp-noise", type=float, default=d.dp_noise, help="Opacus noise multiplier (0: off)")
    p.add_argument("--dp-max-grad-norm", type=float, default=d.dp_max_grad_norm)
    p.add_argument("--prune", type=float, default=d.prune, help="fraction of weights pruned by magnitude")
    p.add_argument("--root-size", type=int, default=d.root_size,
                   help="examples the coordinators hold as root set (0: none)")
    p.add_argument("--example-cap", type=float, default=d.example_cap,
                   help="a client's declared examples count at most this x the round's median claim (0: no cap)")
    p.add_argument("--committee-size", type=int, default=d.committee_size)
    p.add_argument("--byzantine-coordinators", type=int, default=d.byzantine_coordinators,
                   help="experiment: the first N coordinators drawn each round propose a poisoned model")
    p.add_argument("--committee", choices=("server", "nodes"), default=d.committee,
                   help="server: in-process committee; nodes: coordinators on client nodes, the server relays")
    p.add_argument("--ledger", default="", help="sqlite:///path | memory (default: OUT/ledger.db)")
    p.add_argument("--enrolment-key", default="", metavar="FILE",
                   help="the enrolment authority's key, e.g. DIR/enrolment.key of `bcsfl ledger up --dir DIR` "
                        "(default: OUT/keys/enrolment.key, created for a fresh ledger)")
    p.add_argument("--out", default="bcsfl-out", help="folder for metrics.json, keys and the default ledger")
    p.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                   help="ray: Flower's simulation engine (the reference); inprocess: the same apps in this "
                        "process, clients one after another, no Ray (for many runs side by side)")
    p.add_argument("--device", default=d.device,
                   help="torch device of client training and central evaluation: cpu (the reference), "
                        "cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per training process (default 1: one core per client)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import os

    from .simulate import check_settings, simulate

    if args.threads is not None:  # before any training; Ray's workers inherit it too
        from .training.train import THREADS_ENV

        os.environ[THREADS_ENV] = str(max(1, args.threads))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(
        strategy=args.strategy, dataset=args.dataset,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else "",
        num_server_rounds=args.rounds, num_clients=args.num_clients, local_epochs=args.local_epochs,
        learning_rate=args.lr, batch_size=args.batch_size, dirichlet_alpha=args.dirichlet_alpha,
        seed=args.seed, malicious_fraction=args.malicious_fraction, attack=args.attack,
        attack_scale=args.attack_scale, dp_noise=args.dp_noise, dp_max_grad_norm=args.dp_max_grad_norm,
        prune=args.prune, root_size=args.root_size, example_cap=args.example_cap,
        committee_size=args.committee_size, committee=args.committee,
        byzantine_coordinators=args.byzantine_coordinators,
        bcsfl_ledger=args.ledger or f"sqlite:///{out / 'ledger.db'}",
        bcsfl_key_dir=str(out / "keys"), device=args.device, out=str(out),
        bcsfl_enrolment_key=str(Path(args.enrolment_key).resolve()) if args.enrolment_key else "",
    )
    try:
        check_settings(settings, args.engine)
    except ValueError as err:  # settings the run cannot start with: say why, no traceback
        print(f"bcsfl simulate: {err}", file=sys.stderr)
        return 2
    metrics = simulate(settings, args.engine, verbose=args.verbose)
    rounds = metrics["rounds"]
    bad = set(metrics["malicious_clients"])
    caught = sum(len(bad & set(r["rejected"])) for r in rounds)
    print(f"[bcsfl] {settings.strategy}: final accuracy {metrics['final_accuracy']:.4f}; "
          f"malicious client-rounds rejected {caught}/{len(bad) * len(rounds)}; metrics in {out / 'metrics.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bcsfl`` console script."""
    parser = argparse.ArgumentParser(prog="bcsfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    ledger_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
