"""Soak and abuse of a real 4-node ledger cluster: does it stay up, exactly once, in bounded memory?

    python -m experiments.ledger_soak --quick          # 6 to 10 minutes on 2 busy cores
    python -m experiments.ledger_soak --minutes 120    # hours: --minutes 600

A :class:`~bcsfl_flower.ledger.cluster.LocalCluster` of 4 node processes starts in a
temp folder; 8 clients are enrolled with its enrolment key and one model is stored.
Then, all at once:

- **load**: the clients post batches of signed transactions (the throughput
  benchmark's generator, :mod:`experiments.ledger_throughput`) at ``--load`` (default
  0.8) times the throughput a closed-loop calibration measures at the start (10 s after
  3 s of warm-up, no faults); a client whose node does not answer re-sends the batch to the next one;
- **abuse**: about two requests a second that must each get a 4xx (bodies over the
  bound, declared or sent; malformed JSON; unsigned, forged and tampered transactions;
  an upload without its signature; an enrolment signed by a stranger; a chain page of
  a billion blocks);
- **burst**: 6 concurrent 16 MiB ``POST /models`` uploads signed by an enrolled
  identity (at the start, then every 10 minutes);
- **faults**, one at a time (4 nodes tolerate one): a node SIGKILLed and restarted
  2 s later every minute (every 25 s with ``--quick``), the primary and a backup in
  turn, and a backup **partitioned** for 30 s (every 10 minutes; once with
  ``--quick``). The partition is SIGSTOP/SIGCONT of the node's process: the transport
  has no switch to cut its links, so the node is frozen whole (its TCP connections stay
  open, nothing is read or sent, its HTTP clients wait) and then resumes where it was.

The nodes run a copy of ``bcsfl_flower`` taken when the soak starts (in the cluster
folder), so that edits made to the working tree during a run never reach a restarted node.

After the faults, the load goes on for a quiet stretch (45 s; 120 s in long runs), in
which ``max_stall_s``, the longest time without the chain growing on any node, is
measured (the same during the faults is printed on its own line). Then the load stops,
batches never answered as committed are re-sent once (each must come back with its
original block), the nodes must converge, and every node's chain is read page by page:
every transaction a commit answer acknowledged must be on every chain exactly once, in
a block the answer named, and the chains must be equal. Node RSS is sampled every
second (psutil if installed, else ``/proc/PID/status``); memory is called unbounded
when the last third's peak exceeds 1.5 times the first third's plus 64 MiB.

Long runs: the soak keeps every acknowledged transaction id in memory (about 150 bytes
each) and reads every chain in full at the end, so an hour at 4,000 tx/s holds some
14 million ids (about 2 GiB) and reads about 7 GB of JSON per node; lower ``--load``
for runs of many hours on a small machine.

The last line is ``committed=N lost=L duplicated=D max_stall_s=S node_rss_mib_max=M``.
Exit 1 if anything acknowledged is lost, duplicated or in another block, a stored model
is missing on a node, the chains differ, a stall after the faults exceeds 10 s, memory
grows without bound, or an abusive request got anything but a 4xx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import SqliteLedger, make_enrolment
from bcsfl_flower.ledger.cluster import LocalCluster
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature
from experiments.ledger_soak_checks import ChainAudit, abuse_verdict, fault_plan, rss_growth, rss_mib, rss_reader, \
    stalls
from experiments.ledger_soak_traffic import ABUSE_KINDS, Load, abuse, burst, client_seed
from experiments.ledger_throughput import presign

NODES, CLIENTS, BATCH = 4, 8, 500
MAX_STALL_S = 10.0
MODEL_BYTES = 16 * 1024 * 1024  # the charter's default max_model_bytes: the largest upload allowed
MAX_JSON_BODY = 16 * 1024 * 1024  # the nodes' default quota
PAGE = 20  # blocks per chain read: a full block is ~0.5 MB of JSON


def log(text: str) -> None:
    """One progress line on stdout."""
    print(text, flush=True)


class Soak:
    """One soak run over a started cluster (see the module docstring).

    Parameters
    ----------
    cluster : LocalCluster
        The started, ready cluster.
    fault_s : float
        Seconds of faults (no fault starts later).
    kill_every : float
        Seconds between kills.
    partition_every : int
        A partition every this many fault slots.
    quiet_s : float
        Seconds of load after the last fault.
    load : float
        Offered rate as a fraction of the calibrated throughput.
    burst_every : float
        Seconds between bursts of big uploads (0: none).
    """

    def __init__(self, cluster: LocalCluster, fault_s: float, kill_every: float, partition_every: int,
                 quiet_s: float, load: float, burst_every: float) -> None:
        self.cluster, self.urls = cluster, cluster.urls
        self.fault_s, self.kill_every, self.partition_every = fault_s, kill_every, partition_every
        self.quiet_s, self.load_frac, self.burst_every = quiet_s, load, burst_every
        self.commits: list[float] = []
        self.height = 0
        self.primary = 0
        self.views: set[int] = set()
        self.rss: list[tuple[float, float]] = []
        self.abuse: dict[str, Counter[str]] = defaultdict(Counter)
        self.uploads: list[tuple[str, str]] = []
        self.frozen: int | None = None
        self.recovering: dict[int, bool] = {}
        self.hit: dict[int, float] = {}  # node -> when a fault last hit it
        self.faults_start = self.faults_end = self.load_end = 0.0
        self.done = asyncio.Event()

    # ------------------------------------------------------------------ watchers
    async def watch(self, j: int, http: httpx.AsyncClient) -> None:
        """Poll node ``j``'s /health: when the chain grew (on any node), the primary, the views."""
        while not self.done.is_set():
            try:
                h = (await http.get(f"{self.urls[j]}/health", timeout=1.0)).json()
            except (httpx.HTTPError, ValueError):
                await asyncio.sleep(0.25)
                continue
            self.recovering[j] = bool(h["recovering"])
            if h["height"] > self.height:
                self.height = h["height"]
                self.commits.append(time.monotonic())
            if not h["recovering"]:
                self.primary = h["primary"]
                self.views.add(h["view"])
            await asyncio.sleep(0.25)

    async def sample_rss(self) -> None:
        """Every second: the largest RSS of any running node."""
        while not self.done.is_set():
            values = [rss_mib(p.pid) for p in self.cluster.procs if p is not None and p.poll() is None]
            values = [v for v in values if v is not None]
            if values:
                self.rss.append((time.monotonic(), max(values)))
            await asyncio.sleep(1.0)

    async def progress(self, load: Load, every: float) -> None:
        """A line every ``every`` seconds: chain height, answers so far, peak node RSS."""
        t0 = time.monotonic()
        while not self.done.is_set():
            await asyncio.sleep(every)
            rss = self.rss[-1][1] if self.rss else 0.0
            log(f"progress: t={time.monotonic() - t0:.0f}s height={self.height} committed={len(load.acked)} "
                f"unanswered_batches={len(load.unanswered)} node_rss_mib={rss:.0f}")

    async def abuser(self, http: httpx.AsyncClient, key: SigningKey, model: str) -> None:
        """About two abusive requests a second, every kind in turn, to a random node."""
        kinds = list(ABUSE_KINDS)
        i = 0
        while not self.done.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            status = await abuse(http, random.choice(self.urls), kind, key, model, MAX_JSON_BODY, MODEL_BYTES)
            self.abuse[kind][status] += 1
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ faults
    def _alive(self, j: int) -> bool:
        proc = self.cluster.procs[j]
        return proc is not None and proc.poll() is None and j != self.frozen

    def _backup(self) -> int:
        """The backup hit longest ago (never: lowest index first), so every node takes its turn."""
        others = [j for j in range(NODES) if j != self.primary]
        return min(others, key=lambda j: (self.hit.get(j, -1.0), j))

    async def faults(self, uploader: SigningKey) -> None:
        """Run the fault plan and the bursts; note when the last fault ended."""
        t0 = self.faults_start = time.monotonic()
        bursts = [asyncio.ensure_future(self._burst(uploader, t0 + 5 + k * self.burst_every))
                  for k in range(int((self.fault_s - 5) // self.burst_every) + 1)] if self.burst_every else []
        for at, action in fault_plan(self.fault_s, self.kill_every, self.partition_every):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            j = self.primary if action == "kill-primary" else self._backup()
            self.hit[j] = time.monotonic()
            behind = [i for i in range(NODES) if i != j and (not self._alive(i) or self.recovering.get(i))]
            log(f"fault: t={at:.0f}s {action} node {j} (height {self.height})"
                + (f"; nodes {behind} still down or recovering" if behind else ""))
            if action.startswith("kill"):
                self.cluster.kill(j)
                await asyncio.sleep(2.0)
                self.cluster.start(j)
            else:
                proc = self.cluster.procs[j]
                assert proc is not None
                self.frozen = j
                proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(30.0)
                finally:
                    proc.send_signal(signal.SIGCONT)
                    self.frozen = None
            self.faults_end = time.monotonic()
        await asyncio.gather(*bursts)

    async def _burst(self, key: SigningKey, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        started = time.monotonic()
        res = await burst(self.urls, "soak-uploader", key, 6, MODEL_BYTES, self._alive)
        self.uploads += res
        log(f"burst: t={started - self.faults_start:.0f}s 6 x 16 MiB uploads: "
                           f"{dict(Counter(s for _, s in res))} in {time.monotonic() - started:.0f}s")

    # ------------------------------------------------------------------ the run
    async def run(self, load: Load, keys: list[SigningKey], uploader: SigningKey, model: str) -> float:
        """Calibrate, then load + abuse + faults + quiet; return the calibrated tx/s."""
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=httpx.Timeout(load.wait + 10), limits=limits) as http:
            watchers = [asyncio.ensure_future(self.watch(j, http)) for j in range(NODES)]
            watchers.append(asyncio.ensure_future(self.sample_rss()))
            refill = asyncio.ensure_future(load.refill())
            calib = [asyncio.ensure_future(load.client(c, http)) for c in range(CLIENTS)]
            await asyncio.sleep(3.0)  # warm-up: the first answers wait for a full pipeline
            before, t0 = len(load.acked), time.monotonic()
            await asyncio.sleep(10.0)
            tps = (len(load.acked) - before) / (time.monotonic() - t0)
            load.rate = self.load_frac * tps  # the clients pick up the pacing at their next batch
            log(f"calibration: {tps:.0f} tx/s closed-loop; offering {load.rate:.0f} tx/s "
                f"({self.load_frac:.2f} of it) in batches of {BATCH} from {CLIENTS} clients")
            watchers.append(asyncio.ensure_future(self.abuser(http, keys[0], model)))
            watchers.append(asyncio.ensure_future(self.progress(load, 30.0 if self.kill_every < 60 else 60.0)))
            await self.faults(uploader)
            await asyncio.sleep(max(0.0, self.faults_end + self.quiet_s - time.monotonic()))
            self.load_end = time.monotonic()
            load.stop.set()
            await asyncio.gather(*calib, refill)
            left = await load.drain(http)
            log(f"load: {load.sent} transactions posted (re-sends included), {len(load.acked)} answered committed, "
                f"{left} batches still unanswered after one re-send; honest refusals "
                f"{dict(load.refused) or 'none'}; signer starved {load.starved_s:.0f}s")
            self.done.set()
            await asyncio.gather(*watchers)
        return tps


def _pages(url: str) -> Iterator[dict[str, Any]]:
    start: int | None = 0
    with httpx.Client(timeout=60) as http:
        while start is not None:
            page = http.get(f"{url}/getBlockchain", params={"from": start, "limit": PAGE}).json()
            yield from page["chain"]
            start = page["next"]


def _converge(urls: list[str], timeout: float) -> list[dict[str, Any] | None]:
    deadline = time.monotonic() + timeout
    while True:
        found: list[dict[str, Any] | None] = []
        for u in urls:
            try:
                found.append(httpx.get(f"{u}/health", timeout=5).json())
            except (httpx.HTTPError, ValueError):
                found.append(None)
        if all(h is not None and not h["recovering"] for h in found) and \
                len({h["head"] for h in found if h is not None}) == 1:
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def audit_file(audit: ChainAudit, j: int, path: os.PathLike[str], models: list[str]) -> int:
    """Audit node ``j`` from its SQLite file (the node stopped); return how many of ``models`` it lacks."""
    ledger = SqliteLedger(path, create=False, read_only=True)
    try:
        height = ledger.height()
        audit.add_node(j, (b.to_json() for lo in range(0, height, PAGE) for b in ledger.blocks(lo, lo + PAGE)))
        return sum(not ledger.has_model(d) for d in models)
    finally:
        ledger.close()


def freeze_code(folder: str) -> str:
    """Copy ``bcsfl_flower`` into ``folder/code`` and make that the current directory.

    A node process runs ``python -m``, which imports from the current directory first, so
    every node, restarted ones included, runs the code as it was when the soak started,
    whatever is edited in the working tree meanwhile. Returns what was copied, for the log.
    """
    import bcsfl_flower

    src = os.path.dirname(os.path.abspath(bcsfl_flower.__file__))
    code = os.path.join(folder, "code")
    shutil.copytree(src, os.path.join(code, "bcsfl_flower"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.chdir(code)
    try:
        rev = subprocess.run(["git", "-C", src, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"a copy of {src} ({rev or 'not a git checkout'}) taken at start"


def setup(cluster: LocalCluster) -> tuple[list[SigningKey], SigningKey, str]:
    """Enrol the load clients and the uploader; store the model the transactions name."""
    url = cluster.urls[0]
    keys = [SigningKey.from_seed(client_seed(c)) for c in range(CLIENTS)]
    uploader = SigningKey.from_seed(b"soak-uploader")
    for cid, key in [*((f"soak-{c}", k) for c, k in enumerate(keys)), ("soak-uploader", uploader)]:
        httpx.post(f"{url}/identities", json=make_enrolment(cluster.authority, cid, key.public_hex).to_json(),
                   timeout=60).raise_for_status()
    blob = b"soak model bytes"
    model = httpx.post(f"{url}/models", content=blob, timeout=60, headers={
        CLIENT_HEADER: "soak-0", SIGN_HEADER: upload_signature(keys[0], sha256_hex(blob))}).json()["hash"]
    return keys, uploader, model


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the soak, print the figures; the exit code is the verdict."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: kills every 25 s, one partition")
    p.add_argument("--minutes", type=float, default=None,
                   help="total minutes of load for a long run (default: 10; ignored with --quick)")
    p.add_argument("--load", type=float, default=0.8,
                   help="offered rate as a fraction of the calibrated throughput (default: 0.8)")
    p.add_argument("--no-burst", action="store_true",
                   help="leave out the 16 MiB uploads (a diagnosis aid: the verdict is then not the soak's)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="run the cluster in DIR and keep it (default: a temp folder, removed)")
    args = p.parse_args(argv)
    if args.quick:
        fault_s, every, partition_every, quiet = 110.0, 25.0, 100, 45.0
    else:
        quiet = 120.0
        fault_s, every, partition_every = max(60.0, 60 * (args.minutes or 10.0) - quiet), 60.0, 10
    log(f"# ledger soak: {NODES} nodes, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}); faults for "
        f"{fault_s:.0f}s (a kill every {every:.0f}s, partition = SIGSTOP/SIGCONT 30s), then {quiet:.0f}s quiet; "
        f"RSS via {rss_reader()}" + ("; WITHOUT the burst of uploads" if args.no_burst else ""))
    folder = os.path.abspath(args.keep or tempfile.mkdtemp(prefix="bcsfl-soak-"))
    log(f"# nodes run {freeze_code(folder)}; logs in {folder}/node-I.log" + ("" if args.keep else " (removed)"))
    cluster = LocalCluster(NODES, folder, extra=["--log-level", "info"])
    soak = Soak(cluster, fault_s, every, partition_every, quiet, args.load,
                burst_every=0.0 if args.no_burst else 600.0)
    audit = ChainAudit({})
    models_lost, aborted, unresponsive, acked_models = 0, "", [], []
    try:
        cluster.start()
        cluster.wait_ready(120)
        keys, uploader, model = setup(cluster)
        with ProcessPoolExecutor(max_workers=1) as signer:
            load = Load(cluster.urls, CLIENTS, BATCH, model, signer)
            first = presign(CLIENTS, int(6000 * 20 / CLIENTS / BATCH + 1) * BATCH, BATCH, model)
            for c, bodies in enumerate(first):
                load.buffers[c].extend(bodies)
            asyncio.run(soak.run(load, keys, uploader, model))
        bad_abuse, abuse_text = abuse_verdict(soak.abuse)
        log(f"abuse: {abuse_text}; not 4xx: {bad_abuse}")
        heads = _converge(cluster.urls, 120)
        log("heads: " + " ".join(f"node{j}=" + (f"{h['height']}/{h['head'][:8]}/view{h['view']}" if h
                                                else "no-answer-in-5s") for j, h in enumerate(heads))
            + f"; views seen {sorted(soak.views)}")
        audit = ChainAudit(load.acked)
        acked_models = [d for d, s in soak.uploads if s == "200"]
        for j, url in enumerate(cluster.urls):
            try:
                audit.add_node(j, _pages(url))
                stored = set(httpx.get(f"{url}/models", timeout=30).json()["models"])
                models_lost += sum(d not in stored for d in acked_models)
            except (httpx.HTTPError, ValueError, KeyError) as err:
                log(f"node {j}: does not serve its chain ({type(err).__name__}); audited from its file instead")
                unresponsive.append(j)
    except Exception as err:  # noqa: BLE001 - the verdict line is printed whatever happened
        aborted = f"{type(err).__name__}: {err}"
        log(f"soak aborted: {aborted}")
    finally:
        for j, proc in enumerate(cluster.procs):  # a frozen node must be able to take SIGTERM
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        cluster.stop()
    for j in unresponsive:  # the node's durable state: lost means not in its file, not just slow
        try:
            models_lost += audit_file(audit, j, cluster.db_path(j), acked_models)
        except Exception as err:  # noqa: BLE001 - an unreadable file holds nothing
            log(f"node {j}: its file cannot be read either ({type(err).__name__}: {err})")
            audit.add_node(j, [])
            models_lost += len(acked_models)
    if soak.uploads:
        log(f"uploads: {len(soak.uploads)} sent, {len(acked_models)} answered 200, missing on a node: {models_lost}")
    stall_during = stalls(soak.commits, soak.faults_start, soak.faults_end) if soak.faults_end else float("nan")
    stall_after = stalls(soak.commits, soak.faults_end, soak.load_end) if soak.load_end else float("inf")
    growth = rss_growth(soak.rss)
    log(f"stall_during_faults_s={stall_during:.1f} (faults {soak.faults_end - soak.faults_start:.0f}s)")
    log(f"rss_mib first_third_max={growth.first_max:.0f} last_third_max={growth.last_max:.0f} "
        f"(unbounded if last > {growth.ratio} x first + {growth.slack_mib:.0f}): "
        f"{'UNBOUNDED' if growth.unbounded else 'bounded'}")
    log(f"chains: {'equal' if audit.chains_equal else 'DIFFER'} {sorted(audit.heads.items())}; "
        f"{audit.on_chain} transactions on chain; misplaced={len(audit.misplaced)}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    if unresponsive:
        log(f"UNRESPONSIVE at the end: nodes {unresponsive} did not serve their chain over HTTP")
    failed = (aborted or unresponsive or audit.lost or audit.duplicated or audit.misplaced or models_lost or not audit.chains_equal
              or not stall_after <= MAX_STALL_S or growth.unbounded or abuse_verdict(soak.abuse)[0])
    log(f"committed={len(audit.acked)} lost={len(audit.lost)} duplicated={len(audit.duplicated)} "
        f"max_stall_s={stall_after:.1f} node_rss_mib_max={growth.overall_max:.0f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
