"""BCS-FL ServerApp (the paper's Sec. V experiments): builds the chosen strategy, runs it, writes ``metrics.json``.

The same app runs BCS-FL and the baselines (Flower's own FedAvg, Krum, MultiKrum,
Bulyan, FedMedian, FedTrimmedAvg; FLTrust and the paper's Bulyan; and ``fedavg-honest``,
FedAvg told who the attackers are, as a reference), with the same centralised test-set
evaluation, so their numbers compare.

``metrics.json`` lists this run's rounds by Flower's count (``round`` 1..R, the keys of
the per-round lines); each has ``committed`` (BCS-FL: a certified block was appended;
a baseline: Flower got an aggregate) and, for BCS-FL, ``chain_round`` (the round the
block certifies or would have: it continues after rounds an earlier run certified on
the same ledger). ``failed_rounds`` counts the rounds not committed. The app writes
nothing else: no model file (the chain's model store holds every certified model).

On a ledger that already certified rounds, BCS-FL refuses to start unless the
run-config says ``resume = true``; then it starts from the chain head's model
(:meth:`~bcsfl_flower.strategy.BCSFL.start`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from ..training.train import evaluate, resolve_device, set_weights, torch_threads
from ..data import load_dataset
from ..models import build_model
from ..package import arrays_to_numpy, reply_client_id
from ..settings import STRATEGIES, RunSettings
from ..baselines.bulyan import BulyanPaper
from ..baselines.honest_only import HonestOnlyFedAvg
from ..client.attacks import FULL_KNOWLEDGE
from ..strategy import BCSFL
from .task import client_ids, make_root_set, malicious_ids

__all__ = ["RunStopped", "app", "build_strategy", "make_server_app", "run_server"]


def build_strategy(s: RunSettings, num_clients: int) -> Strategy:
    """The strategy named by ``s.strategy``, sized for ``num_clients`` nodes.

    BCS-FL on a ledger with certified rounds continues from its head when
    ``s.resume`` (run-config ``resume``) and refuses to start otherwise. A
    full-knowledge attack wraps the strategy in its evaluation device
    (:mod:`bcsfl_flower.omniscient`).
    """
    strategy = _chosen_strategy(s, num_clients)
    if s.attack in FULL_KNOWLEDGE:  # simulation only: the attackers see the round's honest updates
        from ..omniscient import attach_full_knowledge

        attach_full_knowledge(strategy, s, num_clients)
    return strategy


def _chosen_strategy(s: RunSettings, num_clients: int) -> Strategy:
    common = dict(fraction_evaluate=0.0, min_train_nodes=num_clients, min_available_nodes=num_clients)
    f = max(1, round(s.malicious_fraction * num_clients))
    if s.strategy == "bcsfl":
        root = make_root_set(s, num_clients)
        # Clients cannot reach a memory ledger: the strategy enrols them on first use.
        enrollment = "first-use" if s.bcsfl_ledger.startswith("memory") else "ledger"
        strategy = BCSFL(**common, ledger=s.bcsfl_ledger, committee_size=s.committee_size, root_set=root,
                         enrollment=enrollment, committee=s.committee, key_dir=s.bcsfl_key_dir,
                         enrolment_key=s.enrolment_key_path(), filter_config=s.filter_config(),
                         resume=bool(getattr(s, "resume", False)))
        strategy.committee.byzantine_first = s.byzantine_coordinators  # experiment: poisoned proposers
        return strategy
    if s.strategy == "fltrust":
        from ..baselines.fltrust import FLTrust

        root = make_root_set(s, num_clients)
        if root is None:
            raise ValueError("fltrust needs a root set: root-size must be at least 1")
        return FLTrust(**common, root_set=root)
    baselines = {
        "fedavg": lambda: FedAvg(**common),
        "krum": lambda: Krum(**common, num_malicious_nodes=f),
        "multikrum": lambda: MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=max(1, num_clients - f)),
        "bulyan": lambda: Bulyan(**common, num_malicious_nodes=min(f, (num_clients - 3) // 4)),
        "bulyan-paper": lambda: BulyanPaper(**common, num_malicious_nodes=min(f, (num_clients - 3) // 4)),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=0.2),
        # an oracle for the experiments: it knows the attackers, which no real server does
        "fedavg-honest": lambda: HonestOnlyFedAvg(**common, excluded=client_ids(malicious_ids(s, num_clients))),
    }
    if s.strategy not in baselines:
        raise ValueError(f"unknown strategy {s.strategy!r}; choose from {STRATEGIES}")
    return baselines[s.strategy]()


class _RoundLog:
    """Records who replied to each train round (for strategies that keep no record),
    how long the strategy's ``aggregate_train`` took (server-side time) and whether it
    returned a model (Flower moves on to it; None leaves the global model unchanged)."""

    def __init__(self, strategy: Strategy) -> None:
        self.replied: dict[int, list[str]] = {}
        self.seconds: dict[int, float] = {}
        self.aggregated: dict[int, bool] = {}
        inner = strategy.aggregate_train

        def aggregate_train(server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            self.replied[server_round] = sorted(cid for cid in map(reply_client_id, replies) if cid is not None)
            started = time.perf_counter()
            self.aggregated[server_round] = False
            try:
                arrays, metrics = inner(server_round, replies)
                self.aggregated[server_round] = arrays is not None
                return arrays, metrics
            finally:
                self.seconds[server_round] = time.perf_counter() - started

        strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]


def _round_summary(strategy: Strategy, round_log: _RoundLog, server_round: int, stamps: dict[int, float]) -> str:
    """``; kept K, rejected J; committed|not committed (why); S s`` for the progress line of a round."""
    if server_round == 0:
        return ""
    seconds = stamps[server_round] - stamps.get(server_round - 1, stamps[server_round])
    records = getattr(strategy, "rounds", None)
    record = records[-1] if records and records[-1].get("round") == server_round else None
    if record is None:  # a baseline: who replied, and whether Flower got an aggregate
        done = "aggregated" if round_log.aggregated.get(server_round) else "no aggregate"
        return f"; {len(round_log.replied.get(server_round, []))} replied, {done}; {seconds:.1f} s"
    done = "committed" if record.get("committed") else f"not committed ({str(record.get('reason', ''))[:80]})"
    return (f"; kept {len(record.get('accepted', []))}, rejected {len(record.get('rejected', []))}; {done}; "
            f"{seconds:.1f} s")


def _describe(device: torch.device) -> str:
    """``cpu``, or e.g. ``cuda (NVIDIA H200)``: what the central evaluation ran on."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_server(grid: Grid, s: RunSettings, *, quiet: bool = False) -> dict[str, Any]:
    """Run ``s.num_server_rounds`` rounds; return (and write to ``s.out``) the metrics.

    ``quiet``: no ``[bcsfl] round r/R ...`` line per evaluation. Raises
    :class:`~bcsfl_flower.strategy.ResumeError` (nothing run, nothing written) when a
    BCS-FL ledger already holds certified rounds and ``s.resume`` is not set.
    """
    torch.set_num_threads(torch_threads())
    device = resolve_device(s.device)  # central evaluation; the root set trains on CPU
    num_clients = s.num_clients or len(list(grid.get_node_ids()))
    strategy = build_strategy(s, num_clients)
    round_log = _RoundLog(strategy)
    ds = load_dataset(s.dataset, s.data_dir or None)
    model = build_model(s.dataset, seed=s.seed, variant=s.model_variant())
    accuracy: dict[int, float] = {}
    stamps: dict[int, float] = {0: time.perf_counter()}

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, arrays_to_numpy(arrays))
        loss, acc = evaluate(model, ds.test_x, ds.test_y, device=device)
        accuracy[server_round] = acc
        stamps[server_round] = time.perf_counter()
        if not quiet:
            print(f"[bcsfl] round {server_round}/{s.num_server_rounds} {s.strategy}: "
                  f"test accuracy {acc:.4f} loss {loss:.4f}{_round_summary(strategy, round_log, server_round, stamps)}",
                  flush=True)
        return MetricRecord({"accuracy": acc, "loss": loss})

    initial = ArrayRecord(model.state_dict())
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=s.num_server_rounds,
        train_config=ConfigRecord({"lr": s.learning_rate}),
        evaluate_fn=central_evaluate,
    )
    bcsfl_rounds = {r["round"]: r for r in getattr(strategy, "rounds", [])}
    rounds = []
    for r in range(1, s.num_server_rounds + 1):
        entry = bcsfl_rounds.get(r, {"accepted": round_log.replied.get(r, []), "rejected": [], "committee": []})
        committed = bool(entry.get("committed", round_log.aggregated.get(r, False)))
        rounds.append({
            "round": r,
            "committed": committed,
            "accuracy": accuracy.get(r),
            "accepted": entry["accepted"],
            "rejected": entry["rejected"],
            "committee": entry.get("committee", []),
            "seconds": stamps.get(r, 0.0) - stamps.get(r - 1, 0.0),
            "aggregate_seconds": round_log.seconds.get(r),
            **{k: v for k, v in entry.items() if k in ("model_hash", "block", "decisions", "rejections", "server_seconds",
                                                   "stages", "bytes_moved", "bytes_fetched", "dissenters", "consensus",
                                                   "reason", "chain_round")},
        })
        if not committed and "reason" not in rounds[-1]:
            rounds[-1]["reason"] = "the strategy returned no aggregate"
    metrics = {
        "settings": s.to_mapping(),
        "strategy": s.strategy,
        "final_accuracy": accuracy.get(s.num_server_rounds, accuracy.get(max(accuracy), 0.0)),
        "failed_rounds": sum(not r["committed"] for r in rounds),
        "malicious_clients": client_ids(malicious_ids(s, num_clients)),
        "device": _describe(device),
        "rounds": rounds,
    }
    if isinstance(strategy, BCSFL):  # certified rounds on the ledger before this run (0: a fresh chain)
        metrics["resumed_from_round"] = strategy.round_base
    if s.out:
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".metrics.json.{os.getpid()}.tmp"  # whole or not at all, even if interrupted
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, out / "metrics.json")
    del result
    return metrics


def make_server_app(overrides: Mapping[str, Any] | None = None, *, quiet: bool = False,
                    stop: threading.Event | None = None) -> ServerApp:
    """A ServerApp whose settings are run-config with ``overrides`` on top (``quiet``: see :func:`run_server`).

    ``stop``: once set, the app's next message exchange raises :class:`RunStopped`.
    Flower's simulation runs the ServerApp in a thread that an interrupted simulation
    does not stop (it would wait for replies that never come, and keep the process
    alive); ``bcsfl simulate`` sets it on Ctrl-C. A round being aggregated finishes
    first, so its block is appended whole or not at all.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if stop is not None:
            _stop_on(grid, stop)
        run_server(grid, RunSettings.from_context(context, overrides), quiet=quiet)

    return app


class RunStopped(RuntimeError):
    """The run was stopped from outside (Ctrl-C in the simulation's main thread)."""


def _stop_on(grid: Grid, stop: threading.Event) -> None:
    """Make ``grid``'s pushes and pulls (this instance only) raise :class:`RunStopped` once ``stop`` is set."""
    for name in ("push_messages", "pull_messages"):
        inner = getattr(grid, name)

        def checked(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if stop.is_set():
                raise RunStopped("the run was interrupted")
            return _inner(*args, **kwargs)

        setattr(grid, name, checked)


app = make_server_app()
