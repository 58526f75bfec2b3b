"""Benchmark the PBFT replica on the simulated network.

    python -m experiments.consensus_bench            # n = 4, 7, 10, 13, 16
    python -m experiments.consensus_bench --quick

Table 1, plain PBFT among n replicas: committed requests per second of wall clock
(the whole n-replica system simulated on one core, real Ed25519 signatures, every
receiver verifying every signature: the verification memo is off unless
``--sig-cache``), commit latency in virtual time units (client submission to execution
at f+1 replicas, i.e. when the client holds f+1 matching replies, on a network with
1-3 units of delay), and messages per request.

Table 2, the paper's comparison for one decision on a candidate hash: a PoS-drawn
committee of ``--committee`` replicas runs PBFT and sends the commit certificate to the
other n - c nodes, each of which verifies it, against plain PBFT among all n nodes.
Ratios (all-n / committee) are printed in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional

from bcsfl_flower.consensus.agree import agree
from bcsfl_flower.consensus.messages import Request, set_verify_cache, verify_cache_stats
from bcsfl_flower.consensus.quorum import max_faulty, verify
from bcsfl_flower.consensus.replica import PBFTConfig, Replica
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.simnet import FaultSchedule, SimNetwork
from bcsfl_flower.crypto import sha256_hex

DELAY = (1.0, 3.0)


def bench_pbft(n: int, requests: int, seed: int = 0) -> dict:
    keys = keys_for(n, "bench")
    pubs = [k.public_hex for k in keys]
    cfg = PBFTConfig(checkpoint_interval=16, log_window=64, request_timeout=200.0)
    nodes = [Replica(i, keys[i], pubs, config=cfg) for i in range(n)]
    net = SimNetwork(nodes, FaultSchedule.reliable(seed=seed, delay=DELAY))
    reqs = [Request.make("bench-client", r, sha256_hex(b"candidate-%d" % r)) for r in range(requests)]
    for r, req in enumerate(reqs):
        net.submit_at(0.5 * r, req, targets=[0], retry=1e9)
    verified0 = verify_cache_stats()["verified"]
    t0 = time.perf_counter()
    ok = net.run(1e6, stop=lambda: all(len(net.executed_by.get(q.key, ())) == n for q in reqs))
    wall = time.perf_counter() - t0
    if not ok:
        raise RuntimeError(f"n={n}: not every request committed")
    f = max_faulty(n)
    lat = [sorted(net.executed_by[q.key].values())[f] - 0.5 * r for r, q in enumerate(reqs)]
    return {
        "n": n, "f": f, "wall": wall, "rps": requests / wall,
        "lat_mean": statistics.fmean(lat), "lat_p50": statistics.median(lat),
        "msgs": net.stats.sent / requests,
        "verifies": (verify_cache_stats()["verified"] - verified0) / requests,
    }


def bench_decision(n: int, committee: int, decisions: int) -> dict:
    """One candidate hash: committee of c + certificate to the rest vs PBFT among n."""
    out = {"n": n}
    for label, size in (("committee", committee), ("all", n)):
        keys = keys_for(size, f"decide-{label}")
        walls, lats, msgs = [], [], []
        for d in range(decisions):
            value = sha256_hex(b"aggregate-%d" % d)
            t0 = time.perf_counter()
            res = agree(keys, [value] * size, instance=f"round-{d}", schedule=FaultSchedule.reliable(seed=d, delay=DELAY))
            extra_latency, extra_msgs = 0.0, 0
            if label == "committee" and n > size:
                # The certificate travels to the n - c other nodes; each checks it.
                for _ in range(n - size):
                    assert verify(res.certificate, res.replica_keys, res.request)
                extra_latency, extra_msgs = statistics.fmean(DELAY), n - size
            walls.append(time.perf_counter() - t0)
            if not res.ok:
                raise RuntimeError(f"{label} n={size}: no decision")
            lats.append(res.virtual_time + extra_latency)
            msgs.append(res.messages + extra_msgs)
        out[label] = {
            "wall": statistics.fmean(walls), "lat": statistics.fmean(lats), "msgs": statistics.fmean(msgs),
        }
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and decisions")
    ap.add_argument("--sizes", default="4,7,10,13,16")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--decisions", type=int, default=None)
    ap.add_argument("--committee", type=int, default=4)
    ap.add_argument("--sig-cache", action="store_true", help="memoise signature checks process-wide")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    requests = a.requests or (10 if a.quick else 40)
    decisions = a.decisions or (2 if a.quick else 5)
    set_verify_cache(a.sig_cache)
    t0 = time.perf_counter()
    print(
        f"PBFT on the simulated network: {requests} requests per size, delay {DELAY[0]:g}-{DELAY[1]:g}, "
        f"signature memo {'on' if a.sig_cache else 'off (every receiver verifies)'}"
    )
    print(f"{'n':>3} {'f':>2} {'req/s':>8} {'latency':>8} {'p50':>6} {'msgs/req':>9} {'verif/req':>10} {'wall s':>7}")
    rows = []
    for n in sizes:
        r = bench_pbft(n, requests)
        rows.append(r)
        print(
            f"{r['n']:>3} {r['f']:>2} {r['rps']:>8.1f} {r['lat_mean']:>8.2f} {r['lat_p50']:>6.2f} "
            f"{r['msgs']:>9.0f} {r['verifies']:>10.0f} {r['wall']:>7.2f}",
            flush=True,
        )
    base = rows[0]
    print("throughput relative to n=%d: %s" % (
        base["n"], ", ".join(f"n={r['n']}: {r['rps'] / base['rps']:.2f}x" for r in rows)))
    print()
    c = a.committee
    agree(keys_for(c, "warm-up"), ["00" * 32] * c, instance="warm-up")  # imports, key objects
    print(f"one decision ({decisions} runs averaged): PoS committee of {c} (+ certificate to the other n-{c}) vs PBFT among all n")
    print(
        f"{'n':>3} {'cmte ms':>8} {'all ms':>8} {'ratio':>6} {'cmte lat':>9} {'all lat':>8} {'ratio':>6} "
        f"{'cmte msgs':>10} {'all msgs':>9} {'ratio':>6}"
    )
    for n in sizes:
        if n < c:
            continue
        d = bench_decision(n, c, decisions)
        cm, al = d["committee"], d["all"]
        print(
            f"{n:>3} {cm['wall'] * 1e3:>8.1f} {al['wall'] * 1e3:>8.1f} {al['wall'] / cm['wall']:>6.2f} "
            f"{cm['lat']:>9.2f} {al['lat']:>8.2f} {al['lat'] / cm['lat']:>6.2f} "
            f"{cm['msgs']:>10.0f} {al['msgs']:>9.0f} {al['msgs'] / cm['msgs']:>6.2f}",
            flush=True,
        )
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
