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
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .settings import RunSettings, option_names

__all__ = ["ENGINES", "check_settings", "settings_problems", "simulate"]

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
        Flower's INFO log (each round's sampling, replies, aggregation) and Flower's and
        Ray's deprecation warnings are shown (by default only the one ``[bcsfl] round``
        line per round, warnings and errors), and with Ray, Flower's verbose logging.
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
        if quiet or not verbose:  # our one line per round is the progress; Flower's INFO with --verbose
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


def check_settings(settings: RunSettings, engine: str = "ray", names: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` with the first reason a run cannot start with ``settings`` on ``engine``.

    The reasons are :func:`settings_problems`'; ``names`` says how to call each
    setting in the message (``bcsfl simulate`` passes its option names).
    """
    found = settings_problems(settings, engine, names)
    if found:
        raise ValueError(found[0])


def settings_problems(settings: RunSettings, engine: str = "ray",
                      names: Mapping[str, str] | None = None) -> list[str]:
    """Every reason a simulation cannot start with ``settings`` on ``engine``, one line each.

    Nothing is started, imported heavily or written: the values
    (:meth:`RunSettings.problems`), then what the machine must hold: the dataset's
    files, a writable output folder, and a ledger file that is a ledger. A ledger
    that already holds certified rounds is refused unless ``settings.resume``, so that
    a rerun never mixes two runs in one chain (a federation founded with ``bcsfl
    ledger init``/``enrol`` and no round yet is this run's to start).

    Parameters
    ----------
    names : Mapping[str, str], optional
        Field name -> how to call it in a message (default: its run-config key).
    """
    label = option_names(names)
    found = []
    if isinstance(settings.num_clients, int) and settings.num_clients < 1:
        found.append(f"{label['num_clients']} must be at least 1 (got {settings.num_clients})")
    found += [p for p in settings.problems(names) if not p.startswith(f"{label['num_clients']} ") or not found]
    if engine not in ENGINES:
        found.append(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if found:  # the values first: the files are only looked at for settings that make sense
        return found
    for problem in (_dataset_problem(settings, label), _out_problem(settings, label),
                    _ledger_problem(settings, label), _device_problem(settings, label)):
        if problem:
            found.append(problem)
    return found


def _dataset_problem(s: RunSettings, label: Mapping[str, str]) -> str | None:
    """Where the data set's files are missing, from :func:`bcsfl_flower.data.dataset_dir`'s own lookup.

    Nothing is read or downloaded: a data set missing from the data home while
    downloads are on is no problem here (``bcsfl simulate`` fetches it before the run).
    """
    from .data import DatasetUnavailable, _downloads_on, dataset_dir  # the loader's own switch

    try:
        dataset_dir(s.dataset, s.data_dir or None, download=False)
    except DatasetUnavailable as err:
        return None if not s.data_dir and _downloads_on() else str(err)
    except ValueError as err:
        return f"{label['dataset']}: {err}"
    return None


def _creatable_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be used (or made) for writing, or ``None``."""
    if folder.exists():
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
        return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"
    above = folder.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"cannot create {folder}: {above} is a file"
    return None if os.access(above, os.W_OK | os.X_OK) else f"cannot create {folder}: {above} is not writable"


def _out_problem(s: RunSettings, label: Mapping[str, str]) -> str | None:
    if not s.out:
        return None
    problem = _creatable_folder_problem(Path(s.out).expanduser())
    return f"{label['out']} {problem}" if problem else None




def _ledger_problem(s: RunSettings, label: Mapping[str, str]) -> str | None:
    from .ledger import LedgerError, SqliteLedger, sqlite_path
    from .ledger.sqlite import sqlite_file_kind

    flag = label["bcsfl_ledger"]
    path_text = sqlite_path(s.bcsfl_ledger)  # the URL itself was checked by RunSettings.problems
    if path_text is None:
        return None  # memory, or a cluster: nothing on this machine to look at
    path = Path(path_text).expanduser()
    if not path.exists():
        problem = _creatable_folder_problem(path.parent)
        return f"{flag} {path}: {problem}" if problem else None
    if path.is_dir():
        return f"{flag} {path} is a folder, not a ledger file"
    try:
        kind = sqlite_file_kind(path)  # an empty file is fine: the ledger is created in it
    except OSError as err:
        return f"{flag} {path} cannot be read: {err.strerror or err}"
    if kind == "other":
        return f"{flag} {path} is not a ledger (not a SQLite database)"
    if not os.access(path, os.W_OK):
        return f"{flag} {path} is not writable"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"{flag} {path}: its folder {path.parent} is not writable (SQLite writes its journal there)"
    if kind == "empty":
        return None
    try:
        with SqliteLedger(path, read_only=True) as led:
            height = led.height()
            if height <= 1 or s.resume:
                return None
            rounds = [b.data.get("round") for b in led.blocks()]
    except (LedgerError, OSError, sqlite3.Error) as err:  # e.g. a SQLite database of something else
        return f"{flag} {err}" if str(path) in str(err) else f"{flag} {path} is not a ledger ({err})"
    certified = [r for r in rounds if isinstance(r, int) and not isinstance(r, bool)]
    if not certified:  # a federation founded (charter, enrolments) but no round yet: this run is its first
        return None
    default = s.out and path.resolve() == (Path(s.out).expanduser() / "ledger.db").resolve()
    where, choose = (Path(s.out), label["out"]) if default else (path, flag)
    return (f"{where} already holds a chain of {height} blocks (round {max(certified, default=0)}): "
            f"pass {label['resume']} to continue from its head, or choose a new {choose}")


def _device_problem(s: RunSettings, label: Mapping[str, str]) -> str | None:
    if s.device.strip().lower() in ("cpu", "auto", ""):
        return None  # anything else asks torch (imported only then)
    from .training.train import resolve_device

    try:
        resolve_device(s.device)
    except (RuntimeError, ValueError) as err:
        return f"{label['device']} {s.device}: {err}"
    return None


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
