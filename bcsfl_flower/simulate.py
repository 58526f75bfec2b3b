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
import threading
from pathlib import Path
from typing import Any

from .federation import MIN_COMMITTEE
from .settings import RunSettings

__all__ = ["ENGINES", "check_settings", "simulate"]

ENGINES = ("ray", "inprocess")


def simulate(settings: RunSettings, engine: str = "ray", *, cpus_per_client: float = 1.0,
             gpus_per_client: float | None = None, verbose: bool = False, quiet: bool = False) -> dict[str, Any]:
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
        Flower's and Ray's deprecation warnings are shown (hidden by default), and
        with Ray, Flower's verbose logging.
    quiet : bool
        No ``[bcsfl] round r/R ...`` line per round and no Flower INFO logs (its
        warnings and errors still show). While the run lasts, the ``flwr`` logger is
        set to WARNING; its level, filters and the warning filters are restored after.

    Returns
    -------
    dict
        ``metrics.json``'s contents: per round ``committed``, and ``failed_rounds``
        (a run whose every round failed still returns; the caller decides).

    Raises
    ------
    ValueError
        :func:`check_settings`' first reason.
    bcsfl_flower.strategy.ResumeError
        The BCS-FL ledger already certified rounds and ``settings.resume`` is false
        (or its head's model is not this run's model).
    KeyboardInterrupt
        Propagated as is: a round block is appended in one transaction, so an
        interrupted run leaves a ledger that verifies (its last round may be missing).
    """
    import logging
    import warnings

    check_settings(settings, engine)
    metrics_path = Path(settings.out) / "metrics.json" if settings.out else None
    stale = _stamp(metrics_path)  # a metrics.json from an earlier run is not this run's
    from flwr.supercore.logger import FLOWER_LOGGER as flwr_log  # its import sets the level: import it first

    level = flwr_log.level

    def drop_noise(record: logging.LogRecord) -> bool:
        """Flower's deprecation notices, and the warning about the federated evaluation
        the ServerApp turns off on purpose (it evaluates centrally)."""
        text = record.getMessage().lower()
        return "deprecated" not in text and "federated evaluation will be skipped" not in text

    with warnings.catch_warnings():
        if not verbose:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(flwr|ray)(\.|$)")
            flwr_log.addFilter(drop_noise)
        if quiet:
            flwr_log.setLevel(logging.WARNING)
        try:
            if engine == "inprocess":
                from .inprocess import run_inprocess

                metrics = run_inprocess(settings, quiet=quiet)
            else:
                _run_ray(settings, cpus_per_client, gpus_per_client, verbose, quiet=quiet)
                metrics = None
        finally:
            flwr_log.removeFilter(drop_noise)
            flwr_log.setLevel(level)
    if metrics_path is not None:
        if not metrics_path.is_file() or _stamp(metrics_path) == stale:
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


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of an existing file, else None: tells a rewritten file from a stale one."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if st is not None else None


def _run_ray(settings: RunSettings, cpus_per_client: float, gpus_per_client: float | None, verbose: bool,
             *, quiet: bool = False) -> None:
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
    stop = threading.Event()  # the ServerApp runs in Flower's thread, which an interrupt does not end
    try:
        run_simulation(
            server_app=make_server_app(overrides, quiet=quiet, stop=stop),
            client_app=make_client_app(overrides),
            num_supernodes=settings.num_clients,
            backend_config={
                "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
                "init_args": {"num_cpus": cores, "include_dashboard": False},
            },
            verbose_logging=verbose,
        )
    except BaseException:  # Ctrl-C included: the ServerApp thread stops at its next exchange; propagate
        stop.set()
        raise
