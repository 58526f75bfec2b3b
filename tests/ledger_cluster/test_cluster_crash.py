"""Crash recovery: SIGKILL a node during a stream of commits, 20 times, lose nothing.

A writer thread keeps committing small transaction batches (each answered only once
committed) while the test kills one node with SIGKILL, restarts it from its SQLite
file and waits until it has caught up from its peers. Victims alternate between the
current primary (forcing a view change) and a backup. At the end every node must
hold the identical chain, containing every transaction the cluster acknowledged,
every block seen before a kill must be unchanged, and ``verify_chain`` must pass on
every node's file.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import SqliteLedger, make_transaction, verify_chain
from bcsfl_flower.ledger.cluster import LocalCluster

from .cluster_helpers import chain, converge, federation, health, start_cluster

KILLS = 20


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A fresh 4-node cluster for this test; always stopped."""
    with start_cluster(tmp_path_factory.mktemp("crash"), 4) as c:  # stopped on the way out
        yield c


class Writer(threading.Thread):
    """Commits batches of signed transactions to whichever node answers."""

    def __init__(self, urls: list[str], key: SigningKey, model: str) -> None:
        super().__init__(daemon=True)
        self.urls, self.key, self.model = urls, key, model
        self.acked: set[str] = set()
        self.stop_flag = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self.stop_flag.is_set():
                i += 1
                txs = [make_transaction(self.key, {"model-params": self.model, "num": i})
                       for _ in range(5)]
                url = self.urls[i % len(self.urls)]
                try:
                    resp = http.post(f"{url}/postModelUpdate", params={"wait": 5},
                                     content=json.dumps({"transactions": [t.to_json() for t in txs]}),
                                     headers={"content-type": "application/json"})
                except httpx.TransportError:
                    continue  # that node is down right now
                if resp.status_code >= 500 or resp.status_code in (400, 403, 413, 422):
                    self.errors.append(f"{resp.status_code} {resp.text[:200]}")
                elif resp.status_code == 200:
                    self.acked.update(t.id for t in txs)


@pytest.mark.slow
def test_sigkill_during_commits_loses_nothing(cluster: LocalCluster) -> None:
    fed = federation(cluster, cluster.urls[0], uploader="writer")  # enrolled by the cluster's authority
    with fed.ledger:
        model = fed.ledger.put_model(b"crash test model")
    writer = Writer(cluster.urls, fed.keys["writer"], model)
    writer.start()
    rng = random.Random(7)
    seen: dict[int, str] = {}  # sequenceNo -> hash of blocks observed before a kill
    started = time.monotonic()
    try:
        for k in range(KILLS):
            live = [j for j in range(cluster.n) if cluster.procs[j] is not None]
            primary = health(cluster.urls[live[0]])["primary"]
            victim = primary if k % 2 == 0 else rng.choice([j for j in live if j != primary])
            for block in chain(cluster.urls[victim])[-3:]:
                seen[block["sequenceNo"]] = block["hash"]
            time.sleep(rng.uniform(0.0, 0.3))  # let commits flow: the kill lands mid-stream
            cluster.kill(victim, signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.3))
            cluster.start(victim)
            cluster.wait_ready(60, nodes=[victim])
            assert health(cluster.urls[victim])["height"] >= max(seen) + 1
    finally:
        writer.stop_flag.set()
        writer.join(60)
    elapsed = time.monotonic() - started
    assert not writer.errors, writer.errors[:3]
    heads = converge(cluster.urls)
    chains = [chain(u) for u in cluster.urls]
    assert all(c == chains[0] for c in chains), "nodes hold different chains"
    final = {b["sequenceNo"]: b["hash"] for b in chains[0]}
    assert all(final.get(seq) == h for seq, h in seen.items()), "a committed block changed"
    on_chain = {tx["id"] for b in chains[0] for tx in b["data"].get("transactions", [])}
    assert writer.acked and writer.acked <= on_chain, "an acknowledged transaction was lost"
    assert heads[0]["height"] > 1 + KILLS
    for j in range(cluster.n):
        with SqliteLedger(cluster.db_path(j), read_only=True) as local:
            report = verify_chain(local, authority=cluster.authority.public_hex)
            assert report.ok, report.summary()
    print(f"{KILLS} SIGKILLs in {elapsed:.1f}s; {len(writer.acked)} acknowledged txs, "
          f"{heads[0]['height']} blocks, identical on {cluster.n} nodes")
