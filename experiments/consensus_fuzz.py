"""Fuzz the PBFT replica under random fault schedules and check safety and liveness.

    python -m experiments.consensus_fuzz --nodes 4 --schedules 1000 --seed 11
    python -m experiments.consensus_fuzz --nodes 4 --schedules 200 --seed 1 \\
        --planted-bug commit-on-f+1-prepares          # must report violations
    python -m experiments.consensus_fuzz --nodes 4 --replay 11000042   # one schedule

Schedule i of a run uses the seed ``seed * 1_000_000 + i`` (printed with every
violation, replay it with ``--replay``). Each schedule draws up to f Byzantine replicas
(silent, silent primary, equivocating primary, invalid proposals, replayed, forged and
noise messages, omissions, and ``tamper-relay``: a rushing replica that relays correct
primaries' pre-prepares with the carried request altered and is silent as primary),
permanent crashes so that Byzantine + crashed <= f, and
until GST: loss, delay, duplication, reordering, healing partitions and temporary
crashes (runs also go through log truncation at stable checkpoints, state transfer to
a checkpoint, and request bodies fetched by digest after a view change). SAFETY:
correct replicas never execute different requests at one sequence
number (prefixes agree), every certificate verifies, no request runs twice. LIVENESS:
every correct client's request is executed by every correct replica still up, within
the bound after GST. The last line is ``K schedules, X safety violations, Y liveness
failures`` (schedules with at least one such problem).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from bcsfl_flower.consensus.bugs import PLANTED_BUGS
from bcsfl_flower.consensus.replica import Replica
from bcsfl_flower.consensus.scenario import CONFLICT, draw_scenario, run_scenario

SEED_STRIDE = 1_000_000


def schedule_seed(seed: int, i: int) -> int:
    return seed * SEED_STRIDE + i


def run_one(args: tuple[int, int, Optional[str]]) -> tuple[int, list[str], list[str], str, int]:
    sseed, nodes, bug = args
    sc = draw_scenario(sseed, nodes)
    cls = PLANTED_BUGS[bug] if bug else Replica
    out = run_scenario(sc, cls)
    return sseed, out.safety, out.liveness, sc.describe(), out.max_view


def fuzz(
    nodes: int,
    schedules: int,
    seed: int,
    bug: Optional[str] = None,
    jobs: int = 1,
    max_reports: int = 10,
    stream=sys.stdout,
) -> tuple[int, int, list[int]]:
    """Run the schedules; returns (safety, liveness, seeds of failing schedules)."""
    tasks = [(schedule_seed(seed, i), nodes, bug) for i in range(schedules)]
    if jobs > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(jobs)
        results = pool.imap(run_one, tasks, chunksize=8)
    else:
        pool = None
        results = map(run_one, tasks)
    safety = liveness = reported = conflicts = 0
    failing: list[int] = []
    try:
        for sseed, bad_safety, bad_liveness, desc, _views in results:
            if not (bad_safety or bad_liveness):
                continue
            safety += bool(bad_safety)
            liveness += bool(bad_liveness)
            conflict = any(CONFLICT in p for p in bad_safety)
            failing.append(sseed)
            if reported < max_reports or (conflict and not conflicts):
                conflicts += conflict
                reported += 1
                kind = "SAFETY VIOLATION" if bad_safety else "LIVENESS FAILURE"
                print(f"{kind}: schedule seed {sseed} ({desc})", file=stream)
                for problem in (bad_safety + bad_liveness)[:3]:
                    print(f"    {problem}", file=stream)
                print(
                    f"    reproduce: python -m experiments.consensus_fuzz --nodes {nodes} "
                    f"--replay {sseed}" + (f" --planted-bug {bug}" if bug else ""),
                    file=stream,
                )
            else:
                conflicts += conflict
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if safety:
        print(
            f"{conflicts} of the {safety} safety violations are conflicting commits "
            "(correct replicas executed different requests at one sequence number)",
            file=stream,
        )
    return safety, liveness, failing


def replay(sseed: int, nodes: int, bug: Optional[str]) -> int:
    sc = draw_scenario(sseed, nodes)
    cls = PLANTED_BUGS[bug] if bug else Replica
    out = run_scenario(sc, cls)
    print(sc.describe())
    print(f"ended at t={out.end_time:.1f}, highest view {out.max_view}, trace {out.trace_digest[:16]}")
    for problem in out.safety:
        print(f"SAFETY: {problem}")
    for problem in out.liveness:
        print(f"LIVENESS: {problem}")
    print(f"1 schedules, {int(bool(out.safety))} safety violations, {int(bool(out.liveness))} liveness failures")
    return 1 if (out.safety or out.liveness) else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--schedules", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--planted-bug", choices=sorted(PLANTED_BUGS), default=None)
    ap.add_argument("--replay", type=int, default=None, help="run the one schedule with this seed")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--max-reports", type=int, default=10)
    a = ap.parse_args(argv)
    if a.nodes < 4:
        ap.error("--nodes must be at least 4 (n = 3f + 1 with f >= 1)")
    if a.replay is not None:
        return replay(a.replay, a.nodes, a.planted_bug)
    t0 = time.perf_counter()
    print(
        f"fuzzing PBFT: n={a.nodes} f={(a.nodes - 1) // 3}, {a.schedules} schedules, seed {a.seed}"
        + (f", planted bug {a.planted_bug}" if a.planted_bug else ""),
        flush=True,
    )
    safety, liveness, _ = fuzz(a.nodes, a.schedules, a.seed, a.planted_bug, a.jobs, a.max_reports)
    print(f"wall time {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{a.schedules} schedules, {safety} safety violations, {liveness} liveness failures")
    return 1 if (safety or liveness) and not a.planted_bug else 0


if __name__ == "__main__":
    sys.exit(main())
