"""Ledger throughput and latency of a real N-node PBFT cluster (paper Fig. 5 and 6).

    python -m experiments.ledger_throughput --nodes 4 --quick
    python -m experiments.ledger_throughput --compare --quick      # Fig. 5/6 sweep

Each configuration starts its own cluster (``LocalCluster``: one process per node on
127.0.0.1, SQLite files in a temp folder, the federation's charter as block 1), enrols
C client keys with the cluster's enrolment key (the authority's signed enrolment
transactions, ``POST /identities``), stores one model that the transactions reference
(an upload signed by client 0), and pre-signs every transaction (Ed25519) before the
clock starts: signing is the client's cost, not the ledger's. C concurrent clients
then POST batches of B signed transactions to ``/postModelUpdate`` (client i talks to
node i mod N); a request returns when all its transactions are committed, which gives
the latency. Only transactions committed inside the timed window count, and after the
run every node must hold the same chain (same head hash) containing them all.

Where signatures are checked: the receiving node verifies each transaction before
forwarding it and vouches for it to its peers (``bcsfl_flower.ledger.vouch``); the
primary verifies what it batches; every node checks every transaction of every block it
executes (``Ledger.append``: hashes, signatures, then the federation's rule that each
comes from an enrolled key), answering from memory what it verified itself and what
f+1 replicas vouch for (at 4 nodes: the receiving node and the block's producer; for a
transaction sent to the primary, the replica the primary asked to check it). Each
transaction is verified twice in all at 4 nodes: about 2.0 Ed25519 verifications per
committed transaction (plus the blocks' producer signatures, vouches and PBFT messages), all on
this machine's cores. The printed
``verifies_per_tx`` is the nodes' own count of Ed25519 verifications they ran, and ``node_cpu_ms_per_tx`` is the CPU time all node
processes spent per committed transaction (from ``/proc``), which bounds the rate the
machine's cores can sustain whatever else runs on it; ``node_sys_share`` is the kernel's
part of it (sockets, fsync), and ``client_cpu_ms_per_tx`` what the clients (this process)
spent, which a quiet machine's cores pay too.

``--compare`` prints the paper's comparison: plain PBFT among all N nodes against a
PoS committee (PBFT among ``--committee`` nodes drawn by stake, the others only storing
what it commits; those followers are not run here, so the committee figures show the
consensus path only). On one machine every node shares the same cores, so plain PBFT
loses mostly to the N-fold signature checking, not to the network as in the paper.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger.cluster import LocalCluster
from bcsfl_flower.ledger.replay import make_enrolment
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature

_TIMEOUT = httpx.Timeout(120.0)


@dataclass
class Result:
    """One configuration's measurement."""

    nodes: int
    clients: int
    batch: int
    tps: float
    p50_ms: float
    p99_ms: float
    committed: int
    seconds: float
    verifies_per_tx: float
    cpu_ms_per_tx: float
    txs_per_block: float = 0.0
    sys_share: float = 0.0
    client_cpu_ms_per_tx: float = 0.0

    def line(self, prefix: str = "") -> str:
        return (f"{prefix}nodes={self.nodes} clients={self.clients} batch={self.batch} "
                f"tps={self.tps:.0f} p50_ms={self.p50_ms:.0f} p99_ms={self.p99_ms:.0f} "
                f"committed={self.committed} window_s={self.seconds:.1f} "
                f"verifies_per_tx={self.verifies_per_tx:.2f} "
                f"node_cpu_ms_per_tx={self.cpu_ms_per_tx:.3f} node_sys_share={self.sys_share:.2f} "
                f"client_cpu_ms_per_tx={self.client_cpu_ms_per_tx:.3f} txs_per_block={self.txs_per_block:.0f} "
                "signing=pre-signed")


def _sign_chunk(args: tuple[bytes, int, int, str]) -> list[bytes]:
    """Sign ``count`` transactions of one client in batches; return JSON bodies."""
    from bcsfl_flower.ledger import make_transaction

    seed, count, batch, model = args
    key = SigningKey.from_seed(seed)
    bodies, txs = [], []
    for i in range(count):
        data = {"model-params": model, "model-acc": round((i % 997) / 997, 4), "num": i % 64}
        txs.append(make_transaction(key, data).to_json())
        if len(txs) == batch:
            bodies.append(json.dumps({"transactions": txs}, separators=(",", ":")).encode())
            txs = []
    if txs:
        bodies.append(json.dumps({"transactions": txs}, separators=(",", ":")).encode())
    return bodies


def presign(clients: int, per_client: int, batch: int, model: str) -> list[list[bytes]]:
    """Pre-signed request bodies per client (two worker processes)."""
    jobs = [(f"bench-client-{c}".encode(), per_client, batch, model) for c in range(clients)]
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(_sign_chunk, jobs))


def _cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds used so far by the given processes (Linux /proc)."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _client(url: str, bodies: list[bytes], t_start: float, t_end: float,
                  samples: list[tuple[float, float, int]]) -> None:
    async with httpx.AsyncClient(timeout=_TIMEOUT) as http:
        for body in bodies:
            if time.perf_counter() >= t_end:
                return  # what is still in flight at t_end is not counted
            sent = time.perf_counter()
            resp = await http.post(f"{url}/postModelUpdate", content=body, params={"wait": 60},
                                   headers={"content-type": "application/json"})
            done = time.perf_counter()
            if resp.status_code not in (200, 202):
                raise RuntimeError(f"{url}: HTTP {resp.status_code} {resp.text[:200]}")
            samples.append((sent, done, int(resp.json()["committed"])))
    if time.perf_counter() < t_end:
        raise RuntimeError("a client ran out of pre-signed transactions before the window "
                           "ended; the rate would be a lower bound (raise rate_guess)")


def _settle(urls: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until every node reports the same head; return their /health."""
    deadline = time.monotonic() + timeout
    while True:
        health = [httpx.get(f"{u}/health", timeout=10).json() for u in urls]
        if len({h["head"] for h in health}) == 1:
            return health
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes disagree on the head: {[h['height'] for h in health]}")
        time.sleep(0.2)


def _committed_ids(url: str, start: int, end: int) -> set[str]:
    ids: set[str] = set()
    for lo in range(start, end, 50):
        chain = httpx.get(f"{url}/getBlockchain", params={"start": lo, "end": min(end, lo + 50)},
                          timeout=_TIMEOUT).json()["chain"]
        for block in chain:
            ids.update(tx["id"] for tx in block["data"].get("transactions", []))
    return ids


def measure(nodes: int, clients: int, batch: int, duration: float, warmup: float,
            block_size: int, rate_guess: float = 10000.0) -> Result:
    """Start a cluster, run the clients for ``warmup + duration`` seconds, check, stop.

    ``rate_guess`` sizes the pre-signed transactions: a client that runs out before the
    window ends makes the figure a lower bound, so the run then fails instead.
    """
    per_client = int(rate_guess * (duration + warmup) / clients / batch + 2) * batch
    with tempfile.TemporaryDirectory(prefix="bcsfl-tps-") as tmp:
        cluster = LocalCluster(nodes, tmp, extra=["--batch-size", str(block_size),
                                                  "--log-level", "warning"])
        with cluster:
            cluster.start()
            cluster.wait_ready(120)
            urls = cluster.urls
            keys = [SigningKey.from_seed(f"bench-client-{c}".encode()) for c in range(clients)]
            for c, key in enumerate(keys):  # admitted by the cluster's enrolment authority
                enrol = make_enrolment(cluster.authority, f"bench-{c}", key.public_hex)
                httpx.post(f"{urls[0]}/identities", json=enrol.to_json(),
                           timeout=_TIMEOUT).raise_for_status()
            blob = b"benchmark model bytes"
            model = httpx.post(f"{urls[0]}/models", content=blob, timeout=_TIMEOUT, headers={
                CLIENT_HEADER: "bench-0", SIGN_HEADER: upload_signature(keys[0], sha256_hex(blob))}).json()["hash"]
            bodies = presign(clients, per_client, batch, model)
            before = _settle(urls)
            pids = [p.pid for p in cluster.procs if p is not None]
            samples: list[tuple[float, float, int]] = []
            cpu: list[tuple[float, float]] = []
            own: list[float] = []  # this process (the clients): what a quiet machine also pays
            t0 = time.perf_counter()
            t_start, t_end = t0 + warmup, t0 + warmup + duration

            async def mark_cpu() -> None:
                await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
                cpu.append(_cpu_seconds(pids))
                own.append(time.process_time())
                await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
                cpu.append(_cpu_seconds(pids))
                own.append(time.process_time())

            async def run_all() -> None:
                await asyncio.gather(mark_cpu(), *(
                    _client(urls[c % nodes], bodies[c], t_start, t_end, samples)
                    for c in range(clients)))

            asyncio.run(run_all())
            after = _settle(urls)
            # closed loop in steady state: count what completes inside the window
            window = [s for s in samples if t_start <= s[1] <= t_end]
            committed = sum(s[2] for s in window)
            span = duration
            on_chain = _committed_ids(urls[0], before[0]["height"], after[0]["height"])
            claimed = sum(s[2] for s in samples)
            if len(on_chain) < claimed:
                raise RuntimeError(f"{claimed} txs reported committed, {len(on_chain)} on chain")
            executed = sum(h["stats"]["executed_txs"] - b["stats"]["executed_txs"]
                           for h, b in zip(after, before))
            verified = sum(h["signature_checks"]["verified"] - b["signature_checks"]["verified"]
                           for h, b in zip(after, before))
            if executed != nodes * len(on_chain):  # every node executed (and checked) every tx
                raise RuntimeError(f"nodes executed {executed} txs, want {nodes} x {len(on_chain)}")
            lat = [(s[1] - s[0]) * 1000 for s in window]
    node_cpu = sum(cpu[1]) - sum(cpu[0])
    return Result(nodes, clients, batch, committed / span if span else 0.0,
                  _percentile(lat, 0.50), _percentile(lat, 0.99), committed, span,
                  verified / max(1, len(on_chain)),
                  1000 * node_cpu / max(1, committed),
                  len(on_chain) / max(1, after[0]["height"] - before[0]["height"]),
                  (cpu[1][1] - cpu[0][1]) / node_cpu if node_cpu > 0 else 0.0,
                  1000 * (own[1] - own[0]) / max(1, committed))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def compare(node_counts: list[int], committee: int, args: argparse.Namespace) -> None:
    """Fig. 5/6: plain PBFT over N nodes vs a PoS-drawn committee of ``committee``."""
    from bcsfl_flower.federation.stake import draw_committee

    rows = []
    for n in node_counts:
        stakes = {f"node{j}": 1.0 + (j % 3) for j in range(n)}
        members = draw_committee(stakes, min(committee, n), seed=f"fig5-{n}")
        done: dict[int, Result] = {}
        for scheme, size in (("pbft", n), ("pos-committee", min(committee, n))):
            if size not in done:  # a committee of all n nodes is plain PBFT: measured once
                done[size] = measure(size, args.clients[0], args.batch[0], args.duration,
                                     args.warmup, args.block_size)
            res = done[size]
            rows.append((scheme, n, size, res))
            extra = f" members={'+'.join(members)}" if scheme != "pbft" else ""
            print(f"fig5/6 scheme={scheme} n={n} consensus_nodes={size} tps={res.tps:.0f} "
                  f"p50_ms={res.p50_ms:.0f} p99_ms={res.p99_ms:.0f}{extra}", flush=True)
    if args.csv:
        with open(args.csv, "w") as out:
            out.write("scheme,nodes,consensus_nodes,tps,p50_ms,p99_ms\n")
            for scheme, n, size, res in rows:
                out.write(f"{scheme},{n},{size},{res.tps:.1f},{res.p50_ms:.1f},{res.p99_ms:.1f}\n")
    if args.plot:
        _plot(rows, args.plot, " ".join(sys.argv))


def _plot(rows: list[tuple[str, int, int, Result]], path: str, command: str) -> None:
    """Fig. 5 (throughput) and Fig. 6 (latency) against the number of nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tps, ax_lat) = plt.subplots(1, 2, figsize=(9, 3.6))
    for scheme, label in (("pbft", "plain PBFT (all nodes)"), ("pos-committee", "PoS committee")):
        pts = [(n, r) for s, n, _, r in rows if s == scheme]
        ax_tps.plot([n for n, _ in pts], [r.tps for _, r in pts], marker="o", label=label)
        ax_lat.plot([n for n, _ in pts], [r.p50_ms for _, r in pts], marker="o", label=label)
    ax_tps.set(xlabel="ledger nodes", ylabel="committed tx/s", title="throughput (Fig. 5)")
    ax_lat.set(xlabel="ledger nodes", ylabel="median latency (ms)", title="latency (Fig. 6)")
    ax_tps.set_ylim(bottom=0)
    ax_lat.set_ylim(bottom=0)
    ax_tps.legend()
    fig.text(0.01, 0.01, command, fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every configuration, print one line each."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_ints, default=None, help="node counts, e.g. 4 or 4,7 "
                   "(default 4; with --compare, none unless given)")
    p.add_argument("--clients", type=_ints, default=None, help="concurrent clients, e.g. 8")
    p.add_argument("--batch", type=_ints, default=None, help="transactions per HTTP request")
    p.add_argument("--block-size", type=int, default=2000, help="transactions per block")
    p.add_argument("--duration", type=float, default=None, help="timed seconds per run")
    p.add_argument("--warmup", type=float, default=None, help="untimed seconds first")
    p.add_argument("--quick", action="store_true", help="one short run (under two minutes)")
    p.add_argument("--compare", action="store_true", help="Fig. 5/6: PBFT vs PoS committee")
    p.add_argument("--committee", type=int, default=4, help="PoS committee size")
    p.add_argument("--compare-nodes", type=_ints, default=None, help="node counts to compare")
    p.add_argument("--csv", default="", help="write the comparison rows here")
    p.add_argument("--plot", default="", help="write the comparison as a PNG (matplotlib)")
    args = p.parse_args(argv)
    args.clients = args.clients or [4]
    args.batch = args.batch or [500]
    args.duration = args.duration or (12.0 if args.quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)
    print(f"# {os.cpu_count()} CPUs; transactions pre-signed (Ed25519) before the timed "
          "window; every node checks each before it executes its block (verifying what f+1 replicas do not "
          "vouch for: the receiving node and the primary verify all they pass on); tps counts committed "
          "transactions only", flush=True)
    if args.compare:
        compare(args.compare_nodes or ([4, 7] if args.quick else [4, 7, 10, 13]),
                args.committee, args)
    nodes = args.nodes if args.nodes is not None else ([] if args.compare else [4])
    for n in nodes:
        for c in args.clients:
            for b in args.batch:
                res = measure(n, c, b, args.duration, args.warmup, args.block_size)
                cap = 1000 * (os.cpu_count() or 1) / res.cpu_ms_per_tx if res.cpu_ms_per_tx else 0
                print(f"# node CPU {res.cpu_ms_per_tx:.3f} ms per committed tx: with every core "
                      f"free for the nodes this caps at ~{cap:.0f} tps (load now: "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
                print(res.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
