"""``bcsfl simulate``: one Flower simulation (the paper's Sec. V setting), through Ray or in-process.

BCS-FL runs need at least 4 clients (a committee of 3f+1, f >= 1). The ServerApp creates
the enrolment authority's key (``<key dir>/enrolment.key``, or ``--enrolment-key``) and
installs the charter; the clients, on the same machine, enrol with that key.

``engine="ray"`` (the default and the reference) is Flower's simulation engine: virtual
SuperNodes as Ray actors, one CPU each. ``engine="inprocess"`` runs the same ServerApp
and ClientApp in this process, clients one after another (``bcsfl_flower.inprocess``):
no Ray, no ``flwr.simulation`` import, so a machine with many cores (or without Ray)
can run many runs side by side, one per core.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .federation import MIN_COMMITTEE
from .settings import RunSettings

__all__ = ["ENGINES", "check_settings", "simulate"]

ENGINES = ("ray", "inprocess")


def simulate(settings: RunSettings, engine: str = "ray", *, cpus_per_client: float = 1.0,
             gpus_per_client: float | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run ``settings`` with ``settings.num_clients`` SuperNodes; return the metrics.

    Parameters
    ----------
    settings : RunSettings
        The run; ServerApp and ClientApp receive it as overrides of their run-config
        (the components ``flwr run`` loads). ``settings.device`` picks the torch device
        of client training and central evaluation.
    engine : {"ray", "inprocess"}
        ``"ray"``: Flower's simulation engine (``flwr.simulation.run_simulation``).
        ``"inprocess"``: the same apps in this process, clients one after another.
    cpus_per_client : float
        Ray only: CPUs each virtual client's actor reserves (so at most
        ``cores / cpus_per_client`` clients train at once).
    gpus_per_client : float, optional
        Ray only: the share of a GPU each actor reserves. Default: 0 when
        ``settings.device`` resolves to CPU, else enough for all CPU-bound actors to
        share one GPU. (Ray hides the GPU from an actor that reserves none.)
    verbose : bool
        Ray only: Flower's verbose logging.
    """
    check_settings(settings, engine)
    if engine == "inprocess":
        from .inprocess import run_inprocess

        metrics = run_inprocess(settings)
    else:
        _run_ray(settings, cpus_per_client, gpus_per_client, verbose)
        metrics = None
    metrics_path = Path(settings.out) / "metrics.json" if settings.out else None
    if metrics_path is not None:
        if not metrics_path.is_file():
            raise RuntimeError(f"the simulation ended without writing {metrics_path}; see the log above")
        return json.loads(metrics_path.read_text())
    if metrics is None:
        raise RuntimeError("the Ray engine returns metrics through settings.out; set it")
    return metrics


def check_settings(settings: RunSettings, engine: str = "ray") -> None:
    """Raise ``ValueError`` with the reason when a run cannot start with ``settings`` on ``engine``."""
    if settings.num_clients < 1:
        raise ValueError("num_clients must be at least 1")
    if settings.strategy == "bcsfl" and settings.num_clients < MIN_COMMITTEE:
        raise ValueError(f"BCS-FL needs at least {MIN_COMMITTEE} clients: its committee has 3f+1 members, f >= 1 "
                         f"(got --num-clients {settings.num_clients})")
    if settings.strategy == "bcsfl" and settings.committee_size < MIN_COMMITTEE:
        raise ValueError(f"the committee needs at least {MIN_COMMITTEE} members (3f+1, f >= 1)")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")


def _run_ray(settings: RunSettings, cpus_per_client: float, gpus_per_client: float | None, verbose: bool) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from .apps.client_app import make_client_app
    from .apps.server_app import make_server_app

    cores = os.cpu_count() or 1
    if gpus_per_client is None:
        from .training.train import resolve_device

        on_gpu = resolve_device(settings.device).type == "cuda"
        gpus_per_client = 1.0 / max(1, int(cores / cpus_per_client)) if on_gpu else 0.0
    overrides = settings.to_mapping()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(overrides),
        num_supernodes=settings.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
            "init_args": {"num_cpus": cores, "include_dashboard": False},
        },
        verbose_logging=verbose,
    )
