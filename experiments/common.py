"""What the experiment scripts share: one ``bcsfl simulate`` run as a subprocess,
resumable CSVs, a progress bar and a description of the machine.

Each run writes ``metrics.json`` (see ``bcsfl_flower/apps/server_app.py``); the scripts
turn it into one CSV row. Run folders go under ``runs/experiments/`` (git-ignored).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
RUNS = REPO / "runs" / "experiments"
DATA_DIRS = {
    "mnist": REPO.parent / "shared" / "datasets" / "mnist",
    "fashion-mnist": REPO.parent / "shared" / "datasets" / "fashion-mnist",
}


def data_dir(dataset: str, override: str | None = None) -> str:
    """Folder of ``dataset``'s files ('' for digits, which ships with scikit-learn)."""
    if override:
        return override
    path = DATA_DIRS.get(dataset)
    return str(path) if path else ""


CLIENT_ERROR = "An exception was raised when processing a message"


def code_dir() -> Path:
    """Where the simulated code is imported from: ``$BCSFL_EXPERIMENT_CODE`` or this checkout.

    Point it at a frozen copy (``git archive HEAD | tar -x -C DIR``) when others edit the
    working tree during a long grid: a module changed under a running simulation breaks
    the Ray workers' unpickling.
    """
    return Path(os.environ.get("BCSFL_EXPERIMENT_CODE") or REPO).resolve()


def simulate(args: Sequence[str], out: Path, timeout: float | None = None) -> tuple[dict[str, Any], float]:
    """Run ``bcsfl simulate ARGS --out OUT``; return (metrics.json, wall seconds).

    The log goes to ``OUT.log``. A run that exits non-zero, writes no metrics, or in
    which any client raised (its reply is an error, so the round silently goes on
    without it) raises ``RuntimeError`` naming the log and is not recorded.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.name + ".log")
    cmd = [sys.executable, "-m", "bcsfl_flower.cli", "simulate", *map(str, args), "--out", str(out)]
    code_path = code_dir()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(code_path), os.environ.get("PYTHONPATH", "")) if p)}
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"# code: {code_path}\n" + " ".join(cmd) + "\n")
        handle.flush()
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=code_path, env=env,
                              timeout=timeout).returncode
    seconds = time.perf_counter() - started
    metrics_path = out / "metrics.json"
    if code != 0 or not metrics_path.is_file():
        raise RuntimeError(f"run failed (exit {code}); see {log}")
    if CLIENT_ERROR in log.read_text(errors="replace"):
        raise RuntimeError(f"a client raised during the run (error replies); see {log}")
    return json.loads(metrics_path.read_text()), seconds


def rejection_rates(metrics: Mapping[str, Any], num_clients: int) -> tuple[float, float]:
    """(share of malicious client-rounds rejected, share of honest client-rounds rejected)."""
    bad = set(metrics["malicious_clients"])
    rounds = metrics["rounds"]
    honest_total = (num_clients - len(bad)) * len(rounds)
    caught = sum(len(bad & set(r["rejected"])) for r in rounds)
    wrong = sum(len(set(r["rejected"]) - bad) for r in rounds)
    mal = caught / (len(bad) * len(rounds)) if bad and rounds else float("nan")
    return mal, (wrong / honest_total if honest_total else float("nan"))


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV, [] when it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, fields: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append one row (header first when the file is new), flushed at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _cell(row.get(k)) for k in fields})


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN (undefined, e.g. no malicious clients): empty
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else value


def progress(items: Iterable[Any], total: int, desc: str):
    """A tqdm bar when tqdm is installed (``pip install -e '.[experiments]'``), else plain."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit="run", dynamic_ncols=True)


def machine() -> str:
    """The machine in one line (CPU model, cores, memory, Python, torch)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        torch_v = f", torch {torch.__version__}"
    except ImportError:  # pragma: no cover
        torch_v = ""
    return f"{model}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}{torch_v}"


def plt():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def floats(text: str) -> list[float]:
    """'0.5,0.1' -> [0.5, 0.1]."""
    return [float(t) for t in text.split(",") if t.strip()]


def words(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']."""
    return [t.strip() for t in text.split(",") if t.strip()]
