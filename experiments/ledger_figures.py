"""Fig. 5 and 6: ledger throughput and latency against the node count, PoS committee
against plain PBFT among all nodes.

    python -m experiments.ledger_figures                       # nodes 4,7,10,13,16
    python -m experiments.ledger_figures --quick               # nodes 4,7, short windows
    python -m experiments.ledger_figures --plot-only

This script measures nothing itself. It runs the two benchmarks as subprocesses and
parses the ``key=value`` lines they print:

- ``experiments/ledger_throughput.py --compare``: a real N-node ledger cluster (one
  process per node, HTTP + PBFT over TCP), lines
  ``fig5/6 scheme=pbft|pos-committee n=N consensus_nodes=M tps=T p50_ms=L p99_ms=L99``;
- ``experiments/consensus_bench.py``: the PBFT state machine on the simulated network;
  any printed line carrying a node count (``n=`` or ``nodes=``) and a throughput or
  latency figure (``tps=``, ``*_ms=``) becomes a row, its scheme from ``scheme=``/``mode=``.

A benchmark that does not exist (yet) is skipped with a message. Rows go to
``experiments/results/ledger.csv`` (replaced per source on each run), plots to
``ledger_throughput.png`` (Fig. 5) and ``ledger_latency.png`` (Fig. 6).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from . import common

FIELDS = ("source", "scheme", "nodes", "consensus_nodes", "tps", "p50_ms", "p99_ms", "line")
TOKEN = re.compile(r"([A-Za-z_][\w/.-]*)=(\S+)")
NODE_KEYS = ("n", "nodes", "num_nodes", "N")
TPS_KEYS = ("tps", "throughput", "throughput_tps", "tx_per_s")
P50_KEYS = ("p50_ms", "latency_ms", "mean_ms", "median_ms", "lat_ms")


def _first(d: dict, keys) -> str | None:
    return next((d[k] for k in keys if k in d), None)


def parse(source: str, text: str) -> list[dict]:
    """Rows from the benchmark's printed ``key=value`` lines."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        kv = dict(TOKEN.findall(line))
        nodes = _first(kv, NODE_KEYS)
        tps, p50 = _first(kv, TPS_KEYS), _first(kv, P50_KEYS)
        if nodes is None or (tps is None and p50 is None):
            continue
        if source == "ledger_throughput" and not line.startswith("fig5/6"):
            continue  # its single-configuration lines repeat a compare row
        scheme = kv.get("scheme") or kv.get("mode") or kv.get("consensus") or "pbft"
        rows.append(dict(source=source, scheme=scheme, nodes=int(float(nodes)),
                         consensus_nodes=kv.get("consensus_nodes") or kv.get("committee") or nodes,
                         tps=tps, p50_ms=p50, p99_ms=kv.get("p99_ms"), line=line.strip()))
    return rows


def run_bench(source: str, args: list[str], timeout: float, log_dir: Path) -> list[dict] | None:
    script = common.REPO / "experiments" / f"{source}.py"
    if not script.is_file():
        print(f"{source}: {script.relative_to(common.REPO)} does not exist yet; skipped")
        return None
    cmd = [sys.executable, "-m", f"experiments.{source}", *args]
    print(f"$ {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True, timeout=timeout)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{source}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    for line in proc.stdout.splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        print(f"{source}: exit {proc.returncode} after {time.perf_counter() - started:.0f}s; "
              f"see {log_dir / (source + '.log')}", file=sys.stderr)
    rows = parse(source, proc.stdout)
    print(f"{source}: {len(rows)} row(s) in {time.perf_counter() - started:.0f}s")
    return rows


def plot(rows: list[dict], outdir: Path) -> None:
    plt = common.plt()
    series = defaultdict(list)
    for r in rows:
        series[(r["source"], r["scheme"])].append(r)
    for column, ylabel, name, title in (
        ("tps", "committed transactions / s", "ledger_throughput.png", "Fig. 5: throughput"),
        ("p50_ms", "median commit latency (ms)", "ledger_latency.png", "Fig. 6: latency"),
    ):
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        drawn = False
        for (source, scheme), rs in sorted(series.items()):
            pts = sorted((int(r["nodes"]), float(r[column])) for r in rs if r.get(column) not in (None, ""))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{scheme} ({source})")
            if column == "p50_ms":
                p99 = sorted((int(r["nodes"]), float(r["p99_ms"])) for r in rs if r.get("p99_ms") not in (None, ""))
                if p99:
                    ax.plot([p[0] for p in p99], [p[1] for p in p99], ":", color=ax.lines[-1].get_color(),
                            label=f"{scheme} p99 ({source})")
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("ledger nodes")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} against node count", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        print(f"wrote {outdir / name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", default="4,7,10,13,16", help="node counts")
    p.add_argument("--committee", type=int, default=4, help="PoS committee size")
    p.add_argument("--quick", action="store_true", help="nodes 4,7 and the benchmarks' --quick")
    p.add_argument("--throughput-args", default="",
                   help="extra arguments for ledger_throughput, e.g. --throughput-args=--quick")
    p.add_argument("--consensus-args", default="", help="arguments for consensus_bench (default: --nodes N,..)")
    p.add_argument("--skip", default="", help="comma-separated sources not to run")
    p.add_argument("--csv", default=str(common.RESULTS / "ledger.csv"))
    p.add_argument("--plots", default=str(common.RESULTS))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--plot-only", action="store_true")
    a = p.parse_args(argv)
    nodes = "4,7" if a.quick and a.nodes == "4,7,10,13,16" else a.nodes
    csv_path, outdir = Path(a.csv), Path(a.plots)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = common.read_rows(csv_path)
    if not a.plot_only:
        print(common.machine())
        quick = ["--quick"] if a.quick else []
        benches = {
            "ledger_throughput": ["--compare", "--compare-nodes", nodes, "--committee", str(a.committee), *quick,
                                  *shlex.split(a.throughput_args)],
            "consensus_bench": shlex.split(a.consensus_args) or ["--nodes", nodes, *quick],
        }
        for source, args in benches.items():
            if source in common.words(a.skip):
                continue
            new = run_bench(source, args, a.timeout, common.RUNS / "ledger")
            if new:
                rows = [r for r in rows if r["source"] != source] + new
        csv_path.unlink(missing_ok=True)
        for r in rows:
            common.append_row(csv_path, FIELDS, r)
    if not rows:
        print("no rows: neither benchmark produced any")
        return 1
    plot(rows, outdir)
    by = defaultdict(dict)
    for r in rows:
        by[(r["source"], int(r["nodes"]))][r["scheme"]] = r
    for (source, n), schemes in sorted(by.items()):
        print(f"{source} n={n}: " + "; ".join(f"{s} tps {r['tps'] or '-'} p50 {r['p50_ms'] or '-'} ms"
                                               for s, r in sorted(schemes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
