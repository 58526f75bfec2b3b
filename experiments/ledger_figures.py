"""Fig. 5 and 6: ledger throughput and latency against the node count, PoS committee
against plain PBFT among all nodes.

    python -m experiments.ledger_figures                       # nodes 4,7,10,13,16
    python -m experiments.ledger_figures --quick               # nodes 4,7, short windows
    python -m experiments.ledger_figures --plot-only

This script measures nothing itself. It runs the two benchmarks as subprocesses and
parses what they print:

- ``experiments/ledger_throughput.py --compare``: a real N-node ledger cluster (one
  process per node, HTTP + PBFT over TCP), lines
  ``fig5/6 scheme=pbft|pos-committee n=N consensus_nodes=M tps=T p50_ms=L p99_ms=L99``;
- ``experiments/consensus_bench.py``: the PBFT state machine on the simulated network,
  two tables: plain PBFT among n (requests/s of wall clock, latency in virtual time)
  and one decision by a PoS committee against PBFT among all n (wall ms -> decisions/s,
  latency in virtual time, messages).

Units differ between the sources, so each gets its own panel.

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

FIELDS = ("source", "scheme", "nodes", "consensus_nodes", "throughput", "throughput_unit", "latency_p50",
          "latency_p99", "latency_unit", "messages", "line")
TOKEN = re.compile(r"([A-Za-z_][\w/.-]*)=(\S+)")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
CLUSTER_TPS = "committed tx/s (N-process cluster)"
SIM_REQ = "requests/s (PBFT on the simulated network, 1 core)"
SIM_DEC = "decisions/s (one candidate hash, simulated, 1 core)"
VIRTUAL = "virtual time units (delay 1-3 per message)"


def parse_throughput(text: str) -> list[dict]:
    """``fig5/6 scheme=S n=N consensus_nodes=M tps=T p50_ms=L p99_ms=L99`` lines of ledger_throughput."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("fig5/6"):
            continue  # its single-configuration lines repeat a compare row
        kv = dict(TOKEN.findall(line))
        rows.append(dict(source="ledger_throughput", scheme=kv.get("scheme", "pbft"), nodes=int(kv["n"]),
                         consensus_nodes=kv.get("consensus_nodes", kv["n"]), throughput=kv.get("tps"),
                         throughput_unit=CLUSTER_TPS, latency_p50=kv.get("p50_ms"), latency_p99=kv.get("p99_ms"),
                         latency_unit="ms", line=line.strip()))
    return rows


def parse_consensus(text: str, committee: int) -> list[dict]:
    """consensus_bench's two tables.

    Table 1 rows (8 numbers): n f req/s latency p50 msgs/req verif/req wall-s, plain PBFT
    among n replicas. Table 2 rows (10 numbers): n, committee ms, all ms, ratio, committee
    latency, all latency, ratio, committee msgs, all msgs, ratio, for one decision.
    """
    rows = []
    for line in text.splitlines():
        cells = line.split()
        if not cells or not all(NUMBER.match(c) for c in cells):
            continue
        v = [float(c) for c in cells]
        n = int(v[0])
        if len(v) == 8:
            rows.append(dict(source="consensus_bench", scheme="pbft", nodes=n, consensus_nodes=n, throughput=v[2],
                             throughput_unit=SIM_REQ, latency_p50=v[4], latency_unit=VIRTUAL, messages=v[5],
                             line=line.strip()))
        elif len(v) == 10:
            for scheme, size, ms, lat, msgs in (("pos-committee", committee, v[1], v[4], v[7]),
                                                ("pbft", n, v[2], v[5], v[8])):
                rows.append(dict(source="consensus_bench", scheme=scheme, nodes=n, consensus_nodes=size,
                                 throughput=1000.0 / ms if ms > 0 else None, throughput_unit=SIM_DEC,
                                 latency_p50=lat, latency_unit=VIRTUAL, messages=msgs, line=line.strip()))
    return rows


def run_bench(source: str, args: list[str], timeout: float, log_dir: Path, committee: int) -> list[dict] | None:
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
    rows = parse_throughput(proc.stdout) if source == "ledger_throughput" else parse_consensus(proc.stdout, committee)
    print(f"{source}: {len(rows)} row(s) in {time.perf_counter() - started:.0f}s")
    return rows


def plot(rows: list[dict], outdir: Path) -> None:
    """Fig. 5 (throughput) and Fig. 6 (latency): a panel per source and unit, a line per scheme."""
    plt = common.plt()
    for column, unit_col, name, title in (
        ("throughput", "throughput_unit", "ledger_throughput.png", "Fig. 5: throughput against node count"),
        ("latency_p50", "latency_unit", "ledger_latency.png", "Fig. 6: latency against node count"),
    ):
        panels = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r.get(column) not in (None, ""):
                panels[(r["source"], r["throughput_unit"], r[unit_col])][r["scheme"]].append(r)
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
        for ax, ((source, tunit, unit), schemes) in zip(axes[0], sorted(panels.items())):
            for scheme, rs in sorted(schemes.items()):
                pts = sorted((int(r["nodes"]), float(r[column])) for r in rs)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{scheme} (p50)"
                        if column == "latency_p50" and unit == "ms" else scheme)
                if column == "latency_p50" and any(r.get("latency_p99") not in (None, "") for r in rs):
                    p99 = sorted((int(r["nodes"]), float(r["latency_p99"])) for r in rs
                                 if r.get("latency_p99") not in (None, ""))
                    ax.plot([p[0] for p in p99], [p[1] for p in p99], ":", color=ax.lines[-1].get_color(),
                            label=f"{scheme} (p99)")
            ax.set_xlabel("nodes")
            ax.set_ylabel(unit if column == "latency_p50" else tunit, fontsize=7)
            ax.set_title(f"{source}\n{tunit if column == 'latency_p50' else ''}".strip(), fontsize=8)
            ax.set_ylim(0, None)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
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
            "consensus_bench": ["--sizes", nodes, "--committee", str(a.committee), *quick,
                                *shlex.split(a.consensus_args)],
        }
        for source, args in benches.items():
            if source in common.words(a.skip):
                continue
            new = run_bench(source, args, a.timeout, common.RUNS / "ledger", a.committee)
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
        by[(r["source"], r["throughput_unit"], int(r["nodes"]))][r["scheme"]] = r
    for (source, _, n), schemes in sorted(by.items()):
        print(f"{source} n={n}: " + "; ".join(
            f"{s} {float(r['throughput']):.1f} {r['throughput_unit'].split(' (')[0]}, p50 {float(r['latency_p50']):.2f} "
            f"{r['latency_unit'].split(' (')[0]}" for s, r in sorted(schemes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
