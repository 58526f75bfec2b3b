"""Exactly once: a transaction is on the chain at most once, before and after a restart.

Every node's SQLite file records each committed transaction id with its block, in the
same SQLite transaction as the block. A re-sent transaction, to the node that took it
or another, before or after that node was SIGKILLed and restarted, is answered with
its original block and never gets a second entry; a block that carries it again is
refused on every node. What goes into the replicated state about identities comes from
the blocks (their ``sequenceNo``), never from a node's clock.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.ledger import Block, LedgerError, SqliteLedger, Transaction, build_block, verify_chain
from bcsfl_flower.ledger.base import identity_records
from bcsfl_flower.ledger.cluster import LocalCluster

from .cluster_helpers import chain, converge, federation, start_cluster


# ---------------------------------------------------------------------- one file
def test_the_file_records_each_transaction_once_and_says_in_which_block(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        tx = fed.tx("client-0", n=1)
        led.append(fed.tx_block([tx]))
        seq = led.latest().sequence_no
        assert led.committed([tx.id, "never-sent"]) == {tx.id: seq}
        again = fed.tx("client-1", n=2)
        with pytest.raises(LedgerError, match=f"transaction {tx.id} is already committed in block {seq}"):
            led.append(fed.tx_block([again, tx]))
        assert led.latest().sequence_no == seq and led.committed([again.id]) == {}  # rolled back together
    with SqliteLedger(path) as led:  # and after a restart
        assert led.committed([tx.id]) == {tx.id: seq}
        with pytest.raises(LedgerError, match="already committed"):
            led.append(fed.tx_block([tx], head=led.latest()))


def test_a_file_from_before_the_table_gets_it_filled_from_its_blocks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        txs = [fed.tx("client-0", n=i) for i in range(3)]
        led.append(fed.tx_block(txs))
        seq = led.latest().sequence_no
        enrolled = {b.transactions[0]["id"]: b.sequence_no for b in led.blocks(2, 7)}
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE txs")
    conn.commit()
    conn.close()
    with SqliteLedger(path, read_only=True) as led:  # read-only: read off the blocks
        assert led.committed([txs[0].id]) == {txs[0].id: seq}
    with SqliteLedger(path) as led:
        assert led.committed([t.id for t in txs] + list(enrolled)) == {**{t.id: seq for t in txs}, **enrolled}


def test_identity_fields_come_from_the_block_not_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as led:
        fed = Federation.start(led)
        fed.commit_round(1)
        blocks = led.blocks()
        models = [led.read_model_raw(d) for d in led.model_digests()]
    states = []
    for clock in (1.0, 4e9):  # two nodes whose clocks disagree by a century
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)
        with SqliteLedger(tmp_path / f"replica-{clock}.db") as other:
            for data in models:
                other.put_model(data)
            for block in blocks[1:]:
                other.append(block)
            states.append(other.state())
    assert states[0] == states[1]
    records = identity_records(states[0])
    where = {b.transactions[0]["data"]["enrol"]["client_id"]: b.sequence_no
             for b in blocks if b.transactions and "enrol" in b.transactions[0]["data"]}
    assert {cid: r["enrolled_at"] for cid, r in records.items()} == where


# ---------------------------------------------------------------------- a cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 4-node cluster for this module."""
    with start_cluster(tmp_path_factory.mktemp("exactly-once"), 4) as c:  # stopped on the way out
        yield c


@pytest.fixture(scope="module")
def fed(cluster: LocalCluster) -> Iterator[Federation]:
    """Two clients enrolled through node 0."""
    f = federation(cluster, cluster.urls[0], clients=2)
    with f.ledger:  # closed on the way out
        yield f


def _send(url: str, txs: list[Transaction]) -> dict:
    resp = httpx.post(f"{url}/postModelUpdate", params={"wait": 30}, timeout=60,
                      content=json.dumps({"transactions": [t.to_json() for t in txs]}),
                      headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _entries(cluster: LocalCluster) -> list[Counter[str]]:
    """How often each transaction id is on each node's chain (after they converge)."""
    converge(cluster.urls)
    return [Counter(tx["id"] for b in chain(u) for tx in b["data"].get("transactions", []))
            for u in cluster.urls]


def test_a_resent_transaction_gets_its_original_block_from_any_node(cluster: LocalCluster, fed: Federation) -> None:
    tx = fed.tx("client-0", n=1)
    first = _send(cluster.urls[0], [tx])
    assert first["committed"] == 1 and len(first["blocks"]) == 1
    for url in (cluster.urls[0], cluster.urls[1], cluster.urls[3]):
        assert _send(url, [tx]) == first  # the same answer: its original block
    time.sleep(0.5)  # anything a node wrongly batched would commit now
    assert all(entries[tx.id] == 1 for entries in _entries(cluster))


def test_a_block_that_carries_a_committed_transaction_again_is_refused_everywhere(
        cluster: LocalCluster, fed: Federation) -> None:
    tx = fed.tx("client-1", n=2)
    [seq] = _send(cluster.urls[1], [tx])["blocks"]
    head = converge(cluster.urls)[0]
    latest = httpx.get(f"{cluster.urls[2]}/blocks/latest", timeout=10).json()
    # A faulty primary's block: valid but for the transaction that is already on the chain.
    block = build_block(Block.from_json(latest), {"transactions": [tx]}, seeded("faulty"))
    resp = httpx.post(f"{cluster.urls[2]}/blocks", content=json.dumps(block.to_json()), timeout=60,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 409 and f"already committed in block {seq}" in resp.json()["detail"], resp.text
    assert [h["head"] for h in converge(cluster.urls)] == [head["head"]] * cluster.n
    assert all(entries[tx.id] == 1 for entries in _entries(cluster))


def test_a_transaction_resent_after_a_sigkill_and_restart_commits_once(cluster: LocalCluster, fed: Federation) -> None:
    victim = 2
    txs = [fed.tx("client-0", n=10 + i) for i in range(3)]
    answer = _send(cluster.urls[victim], txs)
    converge(cluster.urls)
    cluster.kill(victim, signal.SIGKILL)
    cluster.start(victim)
    cluster.wait_ready(60, nodes=[victim])
    assert _send(cluster.urls[victim], txs) == answer  # answered from the file: nothing forgotten
    # Every node killed and restarted: no memory and no PBFT log holds the ids any more.
    for j in range(cluster.n):
        cluster.kill(j, signal.SIGKILL)
    cluster.start()
    cluster.wait_ready(60)
    for url in (cluster.urls[victim], cluster.urls[0]):
        assert _send(url, txs) == answer
    fresh = fed.tx("client-1", n=20)
    mixed = _send(cluster.urls[victim], [txs[0], fresh])
    assert mixed["committed"] == 2 and answer["blocks"][0] in mixed["blocks"] and len(mixed["blocks"]) == 2
    time.sleep(0.5)  # anything a node wrongly batched would commit now
    for entries in _entries(cluster):
        assert [entries[t.id] for t in txs] == [1, 1, 1] and entries[fresh.id] == 1
        assert max(entries.values()) == 1  # nothing anywhere twice
    # Identities on every node are the same to the field, enrolled_at the enrolment's block.
    records = [httpx.get(f"{u}/identities", timeout=10).json() for u in cluster.urls]
    assert all(r == records[0] for r in records)
    where = {tx["data"]["enrol"]["client_id"]: b["sequenceNo"] for b in chain(cluster.urls[0])
             for tx in b["data"].get("transactions", []) if "enrol" in tx["data"]}
    assert {cid: r["enrolled_at"] for cid, r in records[0].items()} == where
    cluster.stop()
    for j in range(cluster.n):
        with SqliteLedger(cluster.db_path(j), read_only=True) as local:
            assert verify_chain(local, authority=cluster.authority.public_hex).ok
            assert set(local.committed([t.id for t in txs]).values()) == set(answer["blocks"])
