"""``bcsfl simulate``: one Flower simulation through flwr's own simulation engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .settings import RunSettings

__all__ = ["simulate"]


def simulate(settings: RunSettings, *, cpus_per_client: float = 1.0, verbose: bool = False) -> dict[str, Any]:
    """Run ``settings`` with ``settings.num_clients`` virtual SuperNodes; return metrics.

    ServerApp and ClientApp are the same components ``flwr run`` loads; the settings
    reach both as overrides of their run-config.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from .apps.client_app import make_client_app
    from .apps.server_app import make_server_app

    if settings.num_clients < 1:
        raise ValueError("num_clients must be at least 1")
    overrides = settings.to_mapping()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(overrides),
        num_supernodes=settings.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
        verbose_logging=verbose,
    )
    metrics_path = Path(settings.out) / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"the simulation ended without writing {metrics_path}; see the log above")
    return json.loads(metrics_path.read_text())
