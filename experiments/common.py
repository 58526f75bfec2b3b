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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
RUNS = REPO / "runs" / "experiments"


def data_dir(dataset: str, override: str | None = None) -> str:
    """Folder of ``dataset``'s files ('' for digits, which ships with scikit-learn).

    ``override`` (``--data-dir``) when given, else ``$BCSFL_DATA_DIR/<dataset>`` or
    ``~/.cache/bcsfl/datasets/<dataset>``, downloaded there when online (see
    :func:`bcsfl_flower.data.dataset_dir`). Call it before the first run: when the data
    is not there it prints one line saying how to provide it and exits 2.
    """
    from bcsfl_flower.data import DatasetUnavailable, dataset_dir

    try:
        folder = dataset_dir(dataset, override or None)
    except (DatasetUnavailable, ValueError) as err:
        print(f"{Path(sys.argv[0]).stem or 'experiments'}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return str(folder.resolve()) if folder is not None else ""


CLIENT_ERROR = "An exception was raised when processing a message"


def code_dir() -> Path:
    """Where the simulated code is imported from: ``$BCSFL_EXPERIMENT_CODE`` or this checkout.

    Point it at a frozen copy (``git archive HEAD | tar -x -C DIR``) when others edit the
    working tree during a long grid: a module changed under a running simulation breaks
    the Ray workers' unpickling.
    """
    return Path(os.environ.get("BCSFL_EXPERIMENT_CODE") or REPO).resolve()


def run_fresh(args: Sequence[str], final: Path, log: Path, *, cwd: Path | None = None,
              env: Mapping[str, str] | None = None, timeout: float | None = None, note: str = "") -> int:
    """Run ``bcsfl simulate ARGS`` into a new folder; move it to ``final`` only if it wrote its metrics.

    A run never continues an earlier chain (``bcsfl simulate`` refuses a folder holding
    one), and a failed or interrupted run leaves ``final``, committed results included,
    as it was. The recorded paths in ``metrics.json`` are rewritten to ``final``.
    Returns the exit code; ``final/metrics.json`` exists after a 0.
    """
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.running-", dir=final.parent))  # a rename away
    fresh = work / final.name
    try:
        cmd = [sys.executable, "-m", "bcsfl_flower.cli", "simulate", *map(str, args), "--out", str(fresh)]
        with open(log, "w") as handle:
            handle.write(note + " ".join(cmd) + "\n")
            handle.flush()
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                  timeout=timeout).returncode
        if code != 0 or not (fresh / "metrics.json").is_file():
            return code or 1
        metrics = json.loads((fresh / "metrics.json").read_text())
        settings = metrics.get("settings")
        for key, value in (settings.items() if isinstance(settings, dict) else ()):
            if isinstance(value, str) and str(fresh) in value:
                settings[key] = value.replace(str(fresh), str(final))
        (fresh / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if final.exists():
            os.rename(final, work / f"{final.name}.previous")
        os.rename(fresh, final)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def simulate(args: Sequence[str], out: Path, timeout: float | None = None, *, engine: str = "ray",
             device: str = "cpu", threads: int | None = None) -> tuple[dict[str, Any], float]:
    """Run ``bcsfl simulate ARGS --out OUT``; return (metrics.json, wall seconds).

    The run is ``python -m bcsfl_flower.cli simulate`` with this interpreter, importing
    the code from :func:`code_dir` (no installed package or ``bcsfl`` script needed),
    into a fresh folder moved to OUT on success (:func:`run_fresh`).
    The log goes to ``OUT.log``. A run that exits non-zero, writes no metrics, or in
    which any client raised (its reply is an error, so the round silently goes on
    without it) raises ``RuntimeError`` naming the log and is not recorded.

    Parameters
    ----------
    engine : {"ray", "inprocess"}
        ``bcsfl simulate --engine``: Flower's Ray engine (the reference) or all clients
        in the one subprocess, one after another (no Ray; for many runs side by side).
    device : str
        ``--device``: torch device of client training and central evaluation
        ("cpu", "cuda", "auto").
    threads : int, optional
        Torch threads in the subprocess (``--threads``, and ``OMP_NUM_THREADS`` /
        ``MKL_NUM_THREADS``); default: the CLI's own (1 per client).

    The flags are passed only when they differ from the defaults, so a frozen older
    checkout (``$BCSFL_EXPERIMENT_CODE``) that lacks them still runs the default.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.name + ".log")
    extra = []
    if engine != "ray":
        extra += ["--engine", engine]
    if device != "cpu":
        extra += ["--device", device]
    if threads is not None:
        extra += ["--threads", str(threads)]
    code_path = code_dir()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(code_path), os.environ.get("PYTHONPATH", "")) if p)}
    # a fixed front end's features (the scatter model) are computed by the first run only
    env.setdefault("BCSFL_FEATURE_CACHE", str(RUNS / "features"))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    code = run_fresh([*args, *extra], out, log, cwd=code_path, env=env, timeout=timeout,
                     note=f"# code: {code_path}\n")
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
    """Append one row (header first when the file is new), flushed at once.

    When ``fields`` names columns the file's header lacks (a script gained a column),
    the file is first rewritten with the widened header: old columns keep their place,
    new ones go at the end, and old rows get empty cells there, so no column shifts.
    Columns the file has beyond ``fields`` stay (empty in the new row).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _header(path)
    if header is None:
        header = list(fields)
        with open(path, "w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=header).writeheader()
    elif any(f not in header for f in fields):
        header = header + [f for f in fields if f not in header]
        rows = read_rows(path)
        tmp = path.with_name(path.name + ".widen")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in header} for r in rows)
        os.replace(tmp, path)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writerow({k: _cell(row.get(k)) for k in header})


def _header(path: Path) -> list[str] | None:
    """The CSV's header row, None when the file is missing or empty."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as handle:
        return next(csv.reader(handle), None)


def merge_rows(dst: Path, src: Path, key: Callable[[Mapping[str, str]], Hashable],
               fields: Sequence[str]) -> tuple[int, int]:
    """Append to ``dst`` the rows of ``src`` whose ``key`` ``dst`` does not have yet.

    For bringing back rows another machine produced (its own ``--csv``). Columns are
    ``fields`` plus any other column ``src`` has (the header widens as in
    :func:`append_row`). Returns (rows added, rows skipped: already present, a
    duplicate within ``src``, or without the key's columns).
    """
    have = set()
    for r in read_rows(dst):
        try:
            have.add(key(r))
        except (KeyError, TypeError, ValueError):
            continue
    columns = list(fields) + [c for c in (_header(src) or []) if c not in fields]
    added = skipped = 0
    for r in read_rows(src):
        try:
            k = key(r)
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        if k in have:
            skipped += 1
            continue
        append_row(dst, columns, r)
        have.add(k)
        added += 1
    return added, skipped


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


def run_machine(engine: str, device: str, jobs: int = 1, threads: int | None = None) -> str:
    """What ran one row, for a ``machine`` column: engine, device, parallelism, machine.

    E.g. ``inprocess cuda:0 (NVIDIA H200), 12 jobs x 1 thread / AMD EPYC ..., 16 cores, ...``.
    ``device`` is best the run's own ``metrics["device"]`` (what ``auto`` became).
    """
    threads = threads or 1
    return (f"{engine} {device}, {jobs} job{'s' if jobs != 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
            f" / {machine()}")


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
