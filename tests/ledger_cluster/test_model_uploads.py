"""Model uploads on a real 4-node cluster: the bytes travel over HTTP, consensus orders a digest.

The receiving node stages an upload, sends it to its peers (``POST /staged``), and
orders a small ``model`` operation with f+1 signed storage receipts; every node checks
the receipts when it executes, and one that lacks the bytes fetches them from a
signer. Tests that play a faulty node order operations of their own through a PBFT
link authenticated with that node's key (:mod:`.peer_link`).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ledger_kit import Federation

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger.cluster import LocalCluster, node_files
from bcsfl_flower.ledger.ops import MAX_MODEL_OP, encode_model_op, parse_op
from bcsfl_flower.ledger.receipts import make_receipt
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature
from bcsfl_flower.ledger.wire import APP, encode_frame

from .cluster_helpers import converge, federation, health, start_cluster
from .peer_link import node_link

MAX_MODEL = 8 * 1024 * 1024
_rids = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 4-node cluster (f = 1: an upload needs 2 receipts), models up to 8 MiB by its charter."""
    with start_cluster(tmp_path_factory.mktemp("uploads"), 4, max_model_bytes=MAX_MODEL) as c:
        yield c


@pytest.fixture(scope="module")
def fed(cluster: LocalCluster) -> Iterator[Federation]:
    """Two clients enrolled through node 0; uploads (through node 0) signed by client-0."""
    f = federation(cluster, cluster.urls[0], clients=2, uploader="client-0")
    with f.ledger:
        yield f


def _node_key(cluster: LocalCluster, j: int) -> SigningKey:
    return SigningKey.load_or_create(node_files(cluster.folder, j)[0])


def _headers(fed: Federation, data: bytes) -> dict[str, str]:
    return {"content-type": "application/octet-stream", CLIENT_HEADER: "client-0",
            SIGN_HEADER: upload_signature(fed.keys["client-0"], sha256_hex(data))}


def _stage(cluster: LocalCluster, fed: Federation, j: int, data: bytes) -> dict[str, Any]:
    """Stage ``data`` on node ``j`` as a peer would (the uploader's headers); its receipt."""
    resp = httpx.post(f"{cluster.urls[j]}/staged", content=data, headers=_headers(fed, data), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["receipt"]


def _order(cluster: LocalCluster, value: str) -> None:
    """Have ``value`` ordered as a faulty backup would: a PBFT request to every other node."""
    as_node = (health(cluster.urls[0])["primary"] + 1) % cluster.n
    frame = encode_frame(APP, json.dumps({"type": "request", "client": "test-faulty-node",
                                          "rid": next(_rids), "value": value}).encode())
    for j in range(cluster.n):
        if j != as_node:
            with node_link(cluster, as_node, j) as sock:
                sock.sendall(frame)


def _models_health(url: str) -> dict[str, Any]:
    return health(url)["models"]


def _wait(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stored_everywhere(cluster: LocalCluster, digest: str) -> bool:
    return all(httpx.get(f"{u}/models/{digest}", timeout=10).status_code == 200 for u in cluster.urls)


def _refusals(cluster: LocalCluster, digest: str) -> list[str] | None:
    found = [_models_health(u)["last_model_refusal"] for u in cluster.urls]
    if all(r is not None and r["hash"] == digest for r in found):
        return [r["reason"] for r in found]
    return None


def test_a_multi_mib_upload_reaches_every_node_and_consensus_carries_kilobytes(
        cluster: LocalCluster, fed: Federation) -> None:
    data = os.urandom(6 * 1024 * 1024)
    digest = fed.ledger.put_model(data)
    assert digest == sha256_hex(data)
    _wait("the model on every node", lambda: _stored_everywhere(cluster, digest))
    assert httpx.get(f"{cluster.urls[3]}/models/{digest}", timeout=30).content == data
    for url in cluster.urls:  # the ordered request named the bytes: under a KiB with 4 receipts
        assert _models_health(url)["largest_model_op"] < 2048 < len(data) // 1000
    assert _models_health(cluster.urls[0])["staging"]["models"] == 0  # moved into the store on execution
    assert fed.ledger.put_model(data) == digest  # again: already stored, nothing ordered


def test_b_too_few_or_forged_receipts_are_refused_on_every_node_alike(
        cluster: LocalCluster, fed: Federation) -> None:
    data = os.urandom(64 * 1024)
    digest, sign = sha256_hex(data), upload_signature(fed.keys["client-0"], sha256_hex(data))
    honest = _stage(cluster, fed, 0, data)  # node 0 really holds the bytes
    forged = make_receipt(2, _node_key(cluster, 0), digest, len(data))  # "node 2", signed by node 0
    cases = [([honest], "1 storage receipts; 2 (f+1) are needed"),
             ([honest, forged], "receipt of node 2 is not its signature"),
             ([honest, honest], "repeat a replica")]
    for receipts, why in cases:
        _order(cluster, encode_model_op(digest, len(data), "client-0", sign, receipts))
        reasons = _wait(f"every node's refusal ({why})", lambda: _refusals(cluster, digest))
        assert len(set(reasons)) == 1 and why in reasons[0], reasons
        for url in cluster.urls:  # reset the marker for the next case
            assert httpx.get(f"{url}/models/{digest}", timeout=10).status_code == 404
        _order(cluster, encode_model_op("0" * 64, 1, "client-0", sign, [honest]))
        _wait("the marker", lambda: _refusals(cluster, "0" * 64))
    for url in cluster.urls:
        assert not _models_health(url)["parked_now"]  # refused before anything was fetched


def test_c_nodes_without_the_bytes_fetch_them_on_execution(cluster: LocalCluster, fed: Federation) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest, sign = sha256_hex(data), upload_signature(fed.keys["client-0"], sha256_hex(data))
    receipts = [_stage(cluster, fed, j, data) for j in (0, 1)]  # nodes 2 and 3 never see the upload
    before = {j: _models_health(cluster.urls[j])["models_fetched"] for j in (2, 3)}
    _order(cluster, encode_model_op(digest, len(data), "client-0", sign, receipts))
    _wait("the model on every node", lambda: _stored_everywhere(cluster, digest))
    for j in (2, 3):
        models = _models_health(cluster.urls[j])
        assert models["models_fetched"] == before[j] + 1 and not models["parked_now"]
    sets = [httpx.get(f"{u}/models", timeout=10).json()["models"] for u in cluster.urls]
    assert all(s == sets[0] for s in sets) and digest in sets[0]
    converge(cluster.urls)


def test_c_a_node_down_during_the_upload_fetches_the_bytes_when_it_replays(
        cluster: LocalCluster, fed: Federation) -> None:
    victim = (health(cluster.urls[0])["primary"] + 2) % cluster.n or 3  # a backup that is not node 0
    cluster.kill(victim)
    try:
        data = os.urandom(1024 * 1024)
        digest = fed.ledger.put_model(data)  # staged and receipted by the three nodes up
    finally:
        cluster.start(victim)
    cluster.wait_ready(60, nodes=[victim])
    _wait("the model on the restarted node", lambda: _stored_everywhere(cluster, digest), timeout=30)
    got = health(cluster.urls[victim])
    assert got["models"]["models_fetched"] + got["snapshot"]["models_fetched"] >= 1  # replayed, fetched
    sets = [httpx.get(f"{u}/models", timeout=10).json()["models"] for u in cluster.urls]
    assert all(s == sets[0] for s in sets)
    converge(cluster.urls)


def test_d_a_lying_receiver_gets_nothing_committed_without_an_honest_receipt(
        cluster: LocalCluster, fed: Federation) -> None:
    """Node 0 signs receipts for bytes nobody holds; it cannot make a second node vouch for them."""
    ghost = os.urandom(32 * 1024)  # never sent to any node
    digest, sign = sha256_hex(ghost), upload_signature(fed.keys["client-0"], sha256_hex(ghost))
    liar = make_receipt(0, _node_key(cluster, 0), digest, len(ghost))
    other = os.urandom(32 * 1024)  # an honest node signs only for bytes it was sent, so for another digest
    honest_elsewhere = _stage(cluster, fed, 1, other)
    for receipts, why in (([liar], "are needed"), ([liar, liar], "repeat a replica"),
                          ([liar, honest_elsewhere], "receipt of node 1 is not its signature")):
        _order(cluster, encode_model_op(digest, len(ghost), "client-0", sign, receipts))
        reasons = _wait(f"every node's refusal ({why})", lambda: _refusals(cluster, digest))
        assert len(set(reasons)) == 1 and why in reasons[0], reasons
        _order(cluster, encode_model_op("0" * 64, 1, "client-0", sign, [liar]))
        _wait("the marker", lambda: _refusals(cluster, "0" * 64))
    for url in cluster.urls:
        assert httpx.get(f"{url}/models/{digest}", timeout=10).status_code == 404
        assert not _models_health(url)["parked_now"]
    assert fed.ledger.put_model(b"after the liar") == sha256_hex(b"after the liar")  # still live


def test_inline_model_bytes_are_no_operation(fed: Federation) -> None:
    """The earlier form (bytes in the operation) and any oversized model operation are malformed."""
    from bcsfl_flower.ledger.block import LedgerError

    with pytest.raises(LedgerError, match="never ordered inline"):
        parse_op(json.dumps({"op": "model", "data": "AAAA", "client": "c", "sign": "s"}))
    big = encode_model_op("a" * 64, 1, "c" * MAX_MODEL_OP, "s", [{"node": 0, "sign": "0" * 128}])
    with pytest.raises(LedgerError, match="exceeds"):
        parse_op(big)


def test_a_peer_refuses_to_stage_an_unsigned_upload(cluster: LocalCluster) -> None:
    resp = httpx.post(f"{cluster.urls[2]}/staged", content=b"no signature", timeout=10,
                      headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 401
    assert httpx.get(f"{cluster.urls[2]}/staged/{sha256_hex(b'no signature')}", timeout=10).status_code == 404
