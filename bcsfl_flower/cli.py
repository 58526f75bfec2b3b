"""The ``bcsfl`` command: ``simulate`` a run; ``ledger``: found (init, enrol), serve (up, serve),
show and verify a chain.

Bad input is refused in one line on stderr with exit code 2, before anything starts
(``bcsfl simulate`` checks every setting, the data files, the output folder and the
ledger before importing torch, Flower's engine or Ray). Ctrl-C stops a command with
exit code 130 and one line (``bcsfl: interrupted``); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from .data import DATASETS
from .ledger import cli as ledger_cli
from .settings import ATTACKS, COMMITTEES, STRATEGIES, RunSettings

__all__ = ["INTERRUPTED", "OPTION_NAMES", "main"]

#: Exit code after Ctrl-C (128 + SIGINT), as shells report a process SIGINT ended.
INTERRUPTED = 130
#: RunSettings field -> the ``bcsfl simulate`` option that sets it (for messages).
OPTION_NAMES = {f.name: "--" + f.name.replace("_", "-") for f in fields(RunSettings)} | {
    "num_server_rounds": "--rounds", "learning_rate": "--lr", "bcsfl_ledger": "--ledger",
    "bcsfl_enrolment_key": "--enrolment-key", "bcsfl_key_dir": "--out",
}
_ENGINES = ("ray", "inprocess")  # simulate.ENGINES, without importing it for --help


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="run a Flower simulation of BCS-FL or a baseline",
        description="Run one Flower simulation on this machine: --num-clients virtual clients train on a "
                    "non-IID (Dirichlet) split of --dataset for --rounds rounds; BCS-FL's committee checks "
                    "each round's updates and commits the global model to the ledger. --out receives "
                    "metrics.json, the keys and (by default) the ledger. Every setting, the data files, the "
                    "output folder and the ledger are checked before anything starts: a problem is one line "
                    "on stderr and exit code 2. A ledger that already holds a chain is only continued with "
                    "--resume. Ctrl-C stops the run (exit 130); the ledger keeps every committed round.")
    d = RunSettings()
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy,
                   help="bcsfl, or a baseline aggregation without committee or ledger (fedavg-honest: FedAvg "
                        "over the honest clients only, an oracle for the experiments)")
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="digits is bundled with scikit-learn and needs no files; the others read --data-dir, "
                        "else $BCSFL_DATA_DIR/<dataset> or ~/.cache/bcsfl/datasets/<dataset> (downloaded there "
                        "when online)")
    p.add_argument("--data-dir", default=d.data_dir,
                   help="folder with the dataset's standard files: IDX files (train-images-idx3-ubyte[.gz] ..., "
                        "also in torchvision's MNIST/raw layout) or cifar-10-batches-py; nothing is downloaded "
                        "into a folder you name (default: none: $BCSFL_DATA_DIR or the cache)")
    p.add_argument("--num-clients", type=int, default=10, help="virtual clients (BCS-FL: at least 4)")
    p.add_argument("--rounds", type=int, default=d.num_server_rounds, help="server rounds")
    p.add_argument("--local-epochs", type=int, default=d.local_epochs, help="epochs each client trains per round")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="clients' SGD learning rate")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule,
                   help="constant, or cosine: round r of R trains at lr x (1 + cos(pi (r - 1) / R)) / 2")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clients' minibatch size")
    p.add_argument("--momentum", type=float, default=d.momentum, help="clients' SGD momentum, in [0, 1)")
    p.add_argument("--dirichlet-alpha", type=float, default=d.dirichlet_alpha,
                   help="non-IID-ness of the split, > 0 (smaller: more skewed)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the model and the committee draw")
    p.add_argument("--malicious-fraction", type=float, default=d.malicious_fraction,
                   help="share of clients that run --attack, in [0, 1)")
    p.add_argument("--attack", choices=ATTACKS, default=d.attack, help="what the malicious clients do")
    p.add_argument("--attack-scale", type=float, default=d.attack_scale,
                   help="sign-flip/scaling factor, Gaussian std multiple, IPM epsilon")
    p.add_argument("--dp-noise", type=float, default=d.dp_noise, help="Opacus noise multiplier (0: off)")
    p.add_argument("--dp-max-grad-norm", type=float, default=d.dp_max_grad_norm,
                   help="Opacus per-example gradient clipping norm (with --dp-noise)")
    p.add_argument("--target-epsilon", type=float, default=d.target_epsilon,
                   help="DP-SGD by budget: each client's epsilon (delta 1e-5, one example of its data) over all "
                        "rounds; its noise follows (0: off; --dp-noise, when > 0, wins)")
    p.add_argument("--dp-accountant", choices=("rdp", "prv"), default=d.dp_accountant,
                   help="how epsilon is accounted: rdp, or prv (a tighter upper bound: less noise for the same "
                        "--target-epsilon)")
    p.add_argument("--model", choices=("auto", "default", "dp", "scatter"), default=d.model,
                   help="model variant: auto is, when DP is on, scatter (ScatterNet + linear) for mnist and "
                        "fashion-mnist and the tanh 'dp' variant for the others; without DP the default")
    p.add_argument("--prune", type=float, default=d.prune, help="fraction of weights pruned by magnitude, in [0, 1)")
    p.add_argument("--compression", choices=("none", "topk"), default=d.compression,
                   help="upload compression: none (dense model) or topk (the largest entries of the update, "
                        "the rest carried to the next round as error feedback)")
    p.add_argument("--topk-fraction", type=float, default=d.topk_fraction,
                   help="with --compression topk: share of the update's entries sent, in (0, 0.4]")
    p.add_argument("--quantize-bits", type=int, choices=(0, 2, 8), default=d.quantize_bits,
                   help="with --compression topk: 0 sends float32 values, 8 int8 codes and one scale, 2 ternary "
                        "codes (each value's sign times their mean magnitude)")
    p.add_argument("--root-size", type=int, default=d.root_size,
                   help="examples the coordinators hold as root set (0: none)")
    p.add_argument("--example-cap", type=float, default=d.example_cap,
                   help="a client's declared examples count at most this x the round's median claim (0: no cap)")
    p.add_argument("--server-momentum", type=float, default=d.server_momentum,
                   help="beta of the committee's server momentum, in [0, 1): the candidate adds beta x the last "
                        "certified step (0: off; 0.5 suits DP-SGD clients)")
    p.add_argument("--committee-size", type=int, default=d.committee_size,
                   help="coordinators per round, at least 4 (3f+1 tolerates f)")
    p.add_argument("--byzantine-coordinators", type=int, default=d.byzantine_coordinators,
                   help="experiment: the first N coordinators drawn each round propose a poisoned model")
    p.add_argument("--committee", choices=COMMITTEES, default=d.committee,
                   help="server: in-process committee; nodes: coordinators on client nodes, the server relays")
    p.add_argument("--ledger", default="", metavar="URL",
                   help="where the chain is kept: memory (in this process, gone after the run), "
                        "sqlite:///path (a file; relative to the working folder, sqlite:////abs for an absolute "
                        "path) or http://host:port (a ledger cluster, `bcsfl ledger up`) (default: "
                        "sqlite:///OUT/ledger.db)")
    p.add_argument("--resume", action="store_true",
                   help="continue the chain the ledger already holds from its head (without it, a ledger "
                        "holding more than its genesis block is refused)")
    p.add_argument("--enrolment-key", default="", metavar="FILE",
                   help="the enrolment authority's key, e.g. DIR/enrolment.key of `bcsfl ledger up --dir DIR` "
                        "(default: OUT/keys/enrolment.key, created for a fresh ledger)")
    p.add_argument("--out", default="bcsfl-out", metavar="OUT",
                   help="folder for metrics.json, the keys and the ledger (unless --ledger); created, must not be "
                        "a file")
    p.add_argument("--engine", choices=_ENGINES, default="ray",
                   help="ray: Flower's simulation engine (the reference); inprocess: the same apps in this "
                        "process, clients one after another, no Ray (for many runs side by side)")
    p.add_argument("--device", default=d.device,
                   help="torch device of client training and central evaluation: cpu (the reference), "
                        "cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per training process (default: 1, one core per client)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true", help="Flower's debug log (Ray engine)")
    talk.add_argument("--quiet", action="store_true",
                      help="print only errors and the final line, not each round's progress")
    p.set_defaults(func=_simulate)


def _settings(args: argparse.Namespace, out: Path) -> RunSettings:
    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if path else ""

    return RunSettings(
        strategy=args.strategy, dataset=args.dataset, data_dir=absolute(args.data_dir),
        num_server_rounds=args.rounds, num_clients=args.num_clients, local_epochs=args.local_epochs,
        learning_rate=args.lr, lr_schedule=args.lr_schedule, batch_size=args.batch_size, momentum=args.momentum,
        dirichlet_alpha=args.dirichlet_alpha,
        seed=args.seed, malicious_fraction=args.malicious_fraction, attack=args.attack,
        attack_scale=args.attack_scale, dp_noise=args.dp_noise, dp_max_grad_norm=args.dp_max_grad_norm,
        target_epsilon=args.target_epsilon, dp_accountant=args.dp_accountant, model=args.model,
        prune=args.prune, compression=args.compression, topk_fraction=args.topk_fraction,
        quantize_bits=args.quantize_bits, root_size=args.root_size, example_cap=args.example_cap,
        server_momentum=args.server_momentum,
        committee_size=args.committee_size, committee=args.committee,
        byzantine_coordinators=args.byzantine_coordinators,
        bcsfl_ledger=args.ledger or f"sqlite:///{out / 'ledger.db'}",
        bcsfl_key_dir=str(out / "keys"), device=args.device, out=str(out),
        bcsfl_enrolment_key=absolute(args.enrolment_key), resume=args.resume,
    )


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import settings_problems

    out = Path(args.out).expanduser().resolve()
    settings = _settings(args, out)
    problems = settings_problems(settings, args.engine, OPTION_NAMES)
    if args.threads is not None and args.threads < 1:
        problems.insert(0, f"--threads must be at least 1 (got {args.threads})")
    if problems:  # settings the run cannot start with: say why in one line, before anything starts
        print(f"bcsfl simulate: {problems[0]}", file=sys.stderr)
        return 2
    if settings.dataset != "digits" and not settings.data_dir:  # fetch it into the data home now, not in each worker
        from .data import DatasetUnavailable, dataset_dir

        try:
            dataset_dir(settings.dataset)
        except DatasetUnavailable as err:
            print(f"bcsfl simulate: {err}", file=sys.stderr)
            return 2
    if args.threads is not None:  # before any training; Ray's workers inherit it too
        from .training.train import THREADS_ENV

        os.environ[THREADS_ENV] = str(args.threads)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    out.mkdir(parents=True, exist_ok=True)

    from .simulate import simulate

    try:
        metrics = simulate(settings, args.engine, verbose=args.verbose, quiet=args.quiet)
    except RuntimeError as err:  # the ServerApp's refusal of this ledger's chain (a cluster's, or a model that
        refusal = getattr(sys.modules.get(f"{__package__}.strategy"), "ResumeError", None)  # does not fit it)
        if refusal is None or not isinstance(err, refusal):
            raise
        print(f"bcsfl simulate: {err}", file=sys.stderr)
        return 2
    rounds = metrics["rounds"]
    bad = set(metrics["malicious_clients"])
    caught = sum(len(bad & set(r["rejected"])) for r in rounds)
    print(f"[bcsfl] {settings.strategy}: final accuracy {metrics['final_accuracy']:.4f}; "
          f"malicious client-rounds rejected {caught}/{len(bad) * len(rounds)}; metrics in {out / 'metrics.json'}")
    if rounds and metrics.get("failed_rounds", 0) == len(rounds):
        reasons = sorted({str(r.get("reason", "")) for r in rounds if r.get("reason")})
        print(f"bcsfl simulate: every round failed ({'; '.join(reasons)[:300] or 'no aggregate'})", file=sys.stderr)
        return 1
    return 0


class _Interrupt:
    """SIGINT in the main thread: the first raises ``KeyboardInterrupt`` (once), the next exits at once."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:  # the first one is still unwinding (or something swallowed it): stop now
            _exit_now()
        raise KeyboardInterrupt


def _exit_now() -> None:
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 (exiting anyway)
        pass
    os.write(2, b"bcsfl: interrupted\n")
    os._exit(INTERRUPTED)


@contextmanager
def _sigint_handler() -> Iterator[None]:
    """Install :class:`_Interrupt` for SIGINT while the block runs (main thread only; an ignored SIGINT,
    as in a background job of a script, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _Interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _stop_ray(timeout: float = 8.0) -> None:
    """``ray.shutdown()`` if this process started Ray, at most ``timeout`` seconds."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return
    worker = threading.Thread(target=ray.shutdown, name="bcsfl-ray-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)


def _interrupted() -> int:
    """After Ctrl-C: stop Ray, say so in one line; exit at once if threads of the run are still going."""
    try:
        _stop_ray()
    except BaseException:  # noqa: BLE001 (Ray's own shutdown failing must not print a traceback)
        pass
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if others:  # e.g. Flower's ServerApp thread under Ray: waiting for it would finish the run
        _exit_now()
    print("bcsfl: interrupted", file=sys.stderr)
    return INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The ``bcsfl`` parser with every subcommand."""
    parser = ledger_cli.Parser(
        prog="bcsfl", description="BCS-FL on Flower. `bcsfl simulate` runs a federated-learning simulation (BCS-FL "
                                  "or a baseline); `bcsfl ledger ...` shows, verifies, founds and serves a ledger. "
                                  "`bcsfl COMMAND --help` describes each command and its defaults.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{simulate,ledger}")
    _add_simulate(sub)
    ledger_cli.register(sub)
    ledger_cli.describe_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bcsfl`` console script."""
    try:
        args = build_parser().parse_args(argv)
        if args.command != "simulate":  # ledger serve/up handle SIGINT themselves
            return int(args.func(args) or 0)
        with _sigint_handler():
            try:
                return int(args.func(args) or 0)
            except KeyboardInterrupt:  # a second Ctrl-C while Ray stops exits at once (_Interrupt)
                return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()


if __name__ == "__main__":
    sys.exit(main())
