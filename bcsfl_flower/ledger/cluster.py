"""Running ledger nodes: one node (``serve``), N local nodes (``up``), and a test harness.

Layout of a cluster folder ``D``: ``node-I.key`` (node I's Ed25519 key, mode 0600),
``node-I.pub`` (its public key, hex), ``node-I.db`` (its SQLite ledger), and the
federation's ``enrolment.key`` and ``charter.json`` (:mod:`~.charter_file`). A node
learns its peers' keys from their ``.pub`` files, so nodes on other machines need the
same ``.pub`` files and ``charter.json`` copied into their folder (never the
enrolment key: it stays with the operator who admits identities).

Node ``I`` serves HTTP on the ``I``-th address of ``--peers`` and PBFT (TCP) on that
address's third field, by default its HTTP port plus ``--pbft-offset``.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation.state import DEFAULT_MAX_MODEL_BYTES

from .block import Block
from .charter_file import CHARTER_FILE, ensure_charter
from .quota_flags import add_quota_args, node_quotas

__all__ = ["LocalCluster", "PeerAddr", "node_command", "node_env", "parse_peers", "serve_main", "up"]

DEFAULT_PBFT_OFFSET = 1000
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding bcsfl_flower


@dataclass(frozen=True)
class PeerAddr:
    """Where one node listens: HTTP ``host:port`` and its PBFT port."""

    host: str
    port: int
    pbft_port: int

    @property
    def url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://{self.host}:{self.port}"

    def spec(self) -> str:
        """The ``host:port:pbft_port`` form ``--peers`` takes."""
        return f"{self.host}:{self.port}:{self.pbft_port}"


def parse_peers(text: str, pbft_offset: int = DEFAULT_PBFT_OFFSET) -> list[PeerAddr]:
    """Parse ``--peers``: comma-separated ``[http://]host:port[:pbft_port]``.

    Parameters
    ----------
    text : str
        The list, in node-index order.
    pbft_offset : int (default: 1000)
        PBFT port = HTTP port + offset where an entry gives none.

    Returns
    -------
    list[PeerAddr]
        One address per node.
    """
    peers = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        item = item.removeprefix("http://").rstrip("/")
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"bad peer {item!r}: want host:port or host:port:pbft_port")
        port = int(parts[1])
        peers.append(PeerAddr(parts[0], port, int(parts[2]) if len(parts) == 3
                              else port + pbft_offset))
    if not peers:
        raise ValueError("--peers is empty")
    return peers


def node_files(folder: str | os.PathLike[str], index: int) -> tuple[Path, Path, Path]:
    """``(key, pub, db)`` paths of node ``index`` in a cluster folder."""
    base = Path(folder)
    return base / f"node-{index}.key", base / f"node-{index}.pub", base / f"node-{index}.db"


def ensure_key(folder: str | os.PathLike[str], index: int) -> SigningKey:
    """Load or create node ``index``'s key and (re)write its ``.pub`` file."""
    key_path, pub_path, _ = node_files(folder, index)
    key = SigningKey.load_or_create(key_path)
    if not pub_path.exists() or pub_path.read_text().strip() != key.public_hex:
        tmp = pub_path.with_suffix(f".pub.{os.getpid()}.tmp")
        tmp.write_text(key.public_hex + "\n")
        tmp.replace(pub_path)
    return key


def wait_for_keys(folder: str | os.PathLike[str], n: int, timeout: float = 120.0) -> list[str]:
    """Every node's public key from the ``.pub`` files, waiting for missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        pubs = [node_files(folder, j)[1] for j in range(n)]
        if all(p.exists() for p in pubs):
            keys = [p.read_text().strip() for p in pubs]
            if all(len(k) == 64 for k in keys):
                return keys
        if time.monotonic() > deadline:
            missing = [str(p) for p in pubs if not p.exists()]
            raise TimeoutError(f"peer keys missing: {missing}")
        time.sleep(0.05)


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bcsfl ledger serve", description="run one ledger node")
    add_serve_args(p)
    return p


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The options of ``bcsfl ledger serve``."""
    p.add_argument("--id", type=int, required=True, help="this node's index in --peers")
    p.add_argument("--peers", required=True,
                   help="every node as host:port[:pbft_port], comma-separated, in index order")
    p.add_argument("--dir", required=True, help="folder with node-I.key/.pub/.db")
    p.add_argument("--charter", default=None,
                   help="the federation's signed charter block (charter.json from ledger up/init); installed "
                        "as block 1 on a fresh chain (default: DIR/charter.json if it exists)")
    p.add_argument("--pbft-offset", type=int, default=DEFAULT_PBFT_OFFSET)
    p.add_argument("--bind", default=None, help="bind address (default: this node's host)")
    p.add_argument("--batch-size", type=int, default=1000, help="transactions per block")
    p.add_argument("--max-inflight", type=int, default=3, help="batch blocks in flight")
    p.add_argument("--request-timeout", type=float, default=2.0,
                   help="seconds before backups suspect the primary")
    p.add_argument("--max-body", type=int, default=32 * 1024 * 1024, help="bytes per request")
    p.add_argument("--log-level", default="info")
    add_quota_args(p)


def serve(args: argparse.Namespace) -> int:
    """Run one node until SIGINT/SIGTERM (the body of ``bcsfl ledger serve``)."""
    import logging

    import uvicorn

    from .block import LedgerError
    from .charter_file import read_charter
    from .node import LedgerNode, NodeConfig
    from .service import create_app

    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s node{args.id} %(levelname)s %(message)s")
    try:
        quotas = node_quotas(args)
    except ValueError as err:  # a bad BCSFL_LEDGER_* value, or page > max_page
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    peers = parse_peers(args.peers, args.pbft_offset)
    if not 0 <= args.id < len(peers):
        print(f"ERROR: --id {args.id} is not an index of --peers", file=sys.stderr)
        return 2
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    charter_path = args.charter or (Path(args.dir) / CHARTER_FILE)
    charter: Block | None = None
    if args.charter or Path(charter_path).exists():
        try:
            charter = read_charter(charter_path)
        except (OSError, LedgerError) as err:
            print(f"ERROR: --charter: {err}", file=sys.stderr)
            return 2
    key = ensure_key(args.dir, args.id)
    keys = wait_for_keys(args.dir, len(peers))
    me = peers[args.id]
    bind = args.bind or me.host
    cfg = NodeConfig(batch_size=args.batch_size, max_inflight=args.max_inflight,
                     request_timeout=args.request_timeout)
    try:
        node = LedgerNode(args.id, key, keys, [(bind if j == args.id else p.host, p.pbft_port)
                                               for j, p in enumerate(peers)],
                          node_files(args.dir, args.id)[2], cfg, [p.url for p in peers], charter)
    except LedgerError as err:  # another charter on this chain, or none at all
        print(f"ERROR: node {args.id}: {err}", file=sys.stderr)
        return 2
    app = create_app(node, max_body=args.max_body, quotas=quotas)
    _tune_gc()
    config = uvicorn.Config(app, host=bind, port=me.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run()
    return 0


#: Net new container objects between young-generation collections in a node process (Python's
#: default is 700). A node allocates a dict or two per transaction it parses and frees nearly all
#: of them by reference counting, yet at 700 the collector ran some 15 times a second under load;
#: at 50,000, once or twice in a 12 s run, and the nodes spent about 5% less CPU per transaction
#: (4 nodes, 2026-12-01: 0.493 against 0.521 ms, means of 8 and 7 alternating runs).
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Fewer collections in a node process: what exists at start-up (modules, the node) is frozen
    out of every collection, and the young generation is collected every
    :data:`GC_YOUNG_THRESHOLD` net allocations; cycles are still collected."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a node process (``node_command``)."""
    return serve(_serve_parser().parse_args(argv))


def node_command(args: Sequence[str]) -> list[str]:
    """The argv that starts one node process with ``serve`` options ``args``.

    The process imports only the ledger and consensus modules (neither torch nor
    Flower), so a node starts in well under a second, which matters when a node is
    restarted after a crash.
    """
    return [sys.executable, "-m", "bcsfl_flower.ledger.cluster", *args]


def node_env() -> dict[str, str]:
    """This process's environment, with this copy of ``bcsfl_flower`` importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    import socket

    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """N node processes on 127.0.0.1 (``up`` and the tests).

    Parameters
    ----------
    n : int
        Number of nodes.
    folder : str | os.PathLike[str]
        Cluster folder (keys, databases, logs).
    ports : Sequence[int] | None (default: None)
        HTTP ports (free ones if None); PBFT ports follow ``pbft_ports``.
    pbft_ports : Sequence[int] | None (default: None)
        PBFT ports (free ones if None).
    extra : Sequence[str] (default: ())
        More ``serve`` options for every node.
    log_to_files : bool (default: True)
        Send each node's output to ``node-I.log`` (else inherit this process's).
    enrolment_key : str | os.PathLike[str] | None (default: None)
        The enrolment authority's key file (created if missing); None:
        ``folder/enrolment.key``.
    committee_size : int (default: 4)
        Coordinators per round, for a new ``folder/charter.json``.
    max_model_bytes : int (default: 16 MiB)
        Largest model the ledger stores, for a new ``folder/charter.json``.

    Attributes
    ----------
    authority : SigningKey
        The enrolment authority's key (signs enrolments: ``make_enrolment``).
    charter : Block
        Block 1 of every node's chain, as written to ``charter_path``.
    """

    def __init__(self, n: int, folder: str | os.PathLike[str], ports: Sequence[int] | None = None,
                 pbft_ports: Sequence[int] | None = None, extra: Sequence[str] = (),
                 log_to_files: bool = True, enrolment_key: str | os.PathLike[str] | None = None,
                 committee_size: int = 4, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> None:
        self.n = n
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.authority, self.charter = ensure_charter(self.folder, enrolment_key, committee_size, max_model_bytes)
        self.charter_path = self.folder / CHARTER_FILE
        fresh = iter(free_ports((ports is None) * n + (pbft_ports is None) * n))  # one call:
        ports = list(ports) if ports is not None else [next(fresh) for _ in range(n)]  # distinct
        pbft = list(pbft_ports) if pbft_ports is not None else [next(fresh) for _ in range(n)]
        self.peers = [PeerAddr("127.0.0.1", ports[j], pbft[j]) for j in range(n)]
        self.extra = list(extra)
        self.log_to_files = log_to_files
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self._logs: list[IO[bytes] | None] = [None] * n
        for j in range(n):
            ensure_key(self.folder, j)

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP base URL."""
        return [p.url for p in self.peers]

    def db_path(self, j: int) -> Path:
        """Node ``j``'s SQLite file."""
        return node_files(self.folder, j)[2]

    def start(self, j: int | None = None) -> None:
        """Start node ``j`` (every node if None)."""
        for i in range(self.n) if j is None else [j]:
            args = ["--id", str(i), "--peers", ",".join(p.spec() for p in self.peers),
                    "--dir", str(self.folder), "--charter", str(self.charter_path), *self.extra]
            out: Any = None
            if self.log_to_files:
                self._logs[i] = out = open(self.folder / f"node-{i}.log", "ab")  # noqa: SIM115
            self.procs[i] = subprocess.Popen(node_command(args), stdout=out, env=node_env(),
                                             stderr=subprocess.STDOUT if out else None)

    def kill(self, j: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node ``j`` and reap it."""
        proc = self.procs[j]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs[j] = None
        if self._logs[j] is not None:
            self._logs[j].close()  # type: ignore[union-attr]
            self._logs[j] = None

    def wait_ready(self, timeout: float = 60.0, nodes: Sequence[int] | None = None) -> None:
        """Wait until the nodes answer ``/health`` and have finished recovering."""
        import httpx

        deadline = time.monotonic() + timeout
        for j in range(self.n) if nodes is None else nodes:
            while True:
                proc = self.procs[j]
                if proc is not None and proc.poll() is not None:
                    log_file = self.folder / f"node-{j}.log"
                    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                    raise RuntimeError(f"node {j} exited with {proc.returncode}\n{tail}")
                try:
                    if not httpx.get(f"{self.urls[j]}/health", timeout=2).json()["recovering"]:
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {j} not ready in {timeout}s")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM every node, then SIGKILL what is still running after 5 s."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for j, proc in enumerate(self.procs):
            if proc is not None:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.kill(j)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def up(nodes: int, base_port: int, folder: str, pbft_base_port: int | None = None,
       extra: Sequence[str] = (), enrolment_key: str | None = None, committee_size: int = 4,
       max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> int:
    """Run ``nodes`` node processes on ``base_port...`` until SIGINT/SIGTERM.

    The folder's ``enrolment.key`` (or ``enrolment_key``) and ``charter.json`` are
    created first if missing (see :class:`LocalCluster` for the parameters).

    Returns
    -------
    int
        0 after a clean stop, 1 if a node exited on its own.
    """
    pbft_base = base_port + nodes if pbft_base_port is None else pbft_base_port
    cluster = LocalCluster(nodes, folder, [base_port + j for j in range(nodes)],
                           [pbft_base + j for j in range(nodes)], extra, log_to_files=False,
                           enrolment_key=enrolment_key, committee_size=committee_size,
                           max_model_bytes=max_model_bytes)
    stopping = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        cluster.start()
        print(f"ledger cluster: {nodes} nodes at {', '.join(cluster.urls)} (folder {folder})",
              flush=True)
        print(f"charter: {cluster.charter_path} (block 1 {cluster.charter.hash}); enrolment authority "
              f"{cluster.authority.public_hex[:16]}... (key {enrolment_key or Path(folder) / 'enrolment.key'}; "
              "enrol with: bcsfl ledger enrol)", flush=True)
        while not stopping:
            dead = [j for j, p in enumerate(cluster.procs) if p is not None and p.poll() is not None]
            for j in dead:
                print(f"node {j} exited with {cluster.procs[j].returncode}",  # type: ignore[union-attr]
                      file=sys.stderr, flush=True)
                cluster.procs[j] = None
                status = 1
            time.sleep(0.2)
    finally:
        cluster.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    print("ledger cluster stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(serve_main())
