"""The node HTTP API and the remote backend against a real 4-node cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import (
    GENESIS,
    LedgerError,
    SqliteLedger,
    build_block,
    make_transaction,
    open_ledger,
    verify_chain,
)
from bcsfl_flower.ledger.cli import main as ledger_cli
from bcsfl_flower.ledger.cluster import LocalCluster

from .cluster_helpers import chain, converge, start_cluster

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 4-node cluster with a 1 MiB request limit."""
    c = start_cluster(tmp_path_factory.mktemp("api"), 4, "--max-body", str(MAX_BODY))
    try:
        yield c
    finally:
        c.stop()


def _post_json(url: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), timeout=60,
                      headers={"content-type": "application/json"}, **kw)  # type: ignore[arg-type]


def test_every_node_serves_genesis_and_schema(cluster: LocalCluster) -> None:
    for url in cluster.urls:
        got = httpx.get(f"{url}/getBlockchain", timeout=10).json()
        assert got["chain"][0] == GENESIS.to_json()
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    paths = httpx.get(f"{cluster.urls[0]}/openapi.json", timeout=10).json()["paths"]
    for path in ("/getBlockchain", "/getLatestModel", "/postModelUpdate", "/blocks/{seq}",
                 "/models/{digest}", "/identities", "/stakes", "/health"):
        assert path in paths
    assert httpx.get(f"{cluster.urls[1]}/getLatestModel", timeout=10).status_code == 404


def test_remote_backend_commits_blocks_on_every_node(
    cluster: LocalCluster, client_key: SigningKey
) -> None:
    with open_ledger(cluster.urls[1]) as led:
        led.register_identity("client-a", client_key.public_hex)
        assert led.identity("client-a") == client_key.public_hex
        assert led.identity("nobody") is None
        with pytest.raises(LedgerError, match="another key"):
            led.register_identity("client-a", SigningKey.from_seed(b"other").public_hex)
        for rnd in (1, 2):
            digest = led.put_model(f"global model {rnd}".encode())
            tx = make_transaction(client_key, {"model-params": digest, "model-acc": 0.9, "num": 5})
            block = build_block(led.latest(), {"round": rnd, "transactions": [tx],
                                               "model-params": digest,
                                               "stakes": {"client-a": 1.0 + rnd}}, client_key)
            led.append(block)
            led.append(block)  # the same block again: idempotent
        stale = build_block(led.block(1), {"round": 9}, client_key)
        with pytest.raises(LedgerError, match="already committed"):
            led.append(stale)
        assert led.get_model(digest) == b"global model 2"
        assert verify_chain(led).ok
    heads = converge(cluster.urls)
    assert heads[0]["height"] == 3
    assert len({json.dumps(chain(u), sort_keys=True) for u in cluster.urls}) == 1
    latest = httpx.get(f"{cluster.urls[3]}/getLatestModel", params={"include_bytes": True},
                       timeout=10).json()
    assert latest["sequenceNo"] == 2 and latest["model"]["hash"] == digest
    assert httpx.get(f"{cluster.urls[0]}{latest['model']['url']}", timeout=10).content == \
        b"global model 2"
    assert httpx.get(f"{cluster.urls[2]}/stakes", timeout=10).json()["stakes"] == {"client-a": 3.0}
    assert ledger_cli(["verify", cluster.urls[2]]) == 0
    for j in range(cluster.n):
        with SqliteLedger(cluster.db_path(j)) as local:
            assert verify_chain(local).ok


def test_transaction_batches_commit_on_every_node(
    cluster: LocalCluster, client_key: SigningKey
) -> None:
    url = cluster.urls[2]
    with open_ledger(url) as led:
        led.register_identity("client-a", client_key.public_hex)
        digest = led.put_model(b"client update")
    txs = [make_transaction(client_key, {"model-params": digest, "model-acc": 0.5, "num": i})
           for i in range(300)]
    resp = _post_json(f"{url}/postModelUpdate", {"transactions": [t.to_json() for t in txs]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["committed"] == 300 and resp.json()["pending"] == []
    single = make_transaction(client_key, {"model-params": digest, "model-acc": 0.1, "num": 1})
    assert _post_json(f"{cluster.urls[0]}/postModelUpdate", single.to_json()).status_code == 200
    converge(cluster.urls)
    for u in cluster.urls:
        ids = {tx["id"] for b in chain(u) for tx in b["data"].get("transactions", [])}
        assert {t.id for t in txs} | {single.id} <= ids


def test_bad_requests_get_4xx_with_a_reason(cluster: LocalCluster, client_key: SigningKey) -> None:
    url = cluster.urls[0]
    raw = httpx.post(f"{url}/postModelUpdate", content=b'{"nonsense": [', timeout=10,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "malformed JSON" in raw.json()["detail"]
    stranger = SigningKey.from_seed(b"stranger")
    unknown = make_transaction(stranger, {"num": 1}).to_json()
    resp = _post_json(f"{url}/postModelUpdate", unknown)
    assert resp.status_code == 403 and "unknown client" in resp.json()["detail"]
    httpx.post(f"{url}/identities", json={"client_id": "client-a",
               "public_key": client_key.public_hex}, timeout=60).raise_for_status()
    forged = make_transaction(client_key, {"num": 2}).to_json()
    forged["sign"] = "00" * 64
    resp = _post_json(f"{url}/postModelUpdate", forged)
    assert resp.status_code == 422 and "invalid signature" in resp.json()["detail"]
    tampered = make_transaction(client_key, {"num": 3}).to_json()
    tampered["data"]["num"] = 4
    assert "hash does not match" in _post_json(f"{url}/postModelUpdate", tampered).json()["detail"]
    wrong_type = dict(make_transaction(client_key, {"num": 1}).to_json(), timestamp="soon")
    assert _post_json(f"{url}/postModelUpdate", wrong_type).status_code == 422
    missing_model = make_transaction(client_key, {"model-params": "ab" * 32}).to_json()
    assert "not stored" in _post_json(f"{url}/postModelUpdate", missing_model).json()["detail"]
    big = httpx.post(f"{url}/models", content=b"x" * (MAX_BODY + 1), timeout=30)
    assert big.status_code == 413 and "exceeds" in big.json()["detail"]
    assert httpx.get(f"{url}/blocks/99999", timeout=10).status_code == 404
    assert httpx.get(f"{url}/blocks/minus-one", timeout=10).status_code == 422
    assert httpx.get(f"{url}/models/not-a-digest", timeout=10).status_code == 422
    assert httpx.get(f"{url}/models/{'0' * 64}", timeout=10).status_code == 404
    assert httpx.get(f"{url}/identities/nobody", timeout=10).status_code == 404
    conflict = httpx.post(f"{url}/identities", json={"client_id": "client-a",
                          "public_key": stranger.public_hex}, timeout=60)
    assert conflict.status_code == 409
    assert httpx.post(f"{url}/identities", json={"client_id": "x", "public_key": "nope"},
                      timeout=10).status_code == 422
    assert _post_json(f"{url}/blocks", {"hash": 1}).status_code == 422
    unsigned = build_block(GENESIS, {"round": 1}, client_key).to_json()
    unsigned["sign"] = "11" * 64
    assert "signature" in _post_json(f"{url}/blocks", unsigned).json()["detail"]
    with open_ledger(url) as led:  # make sure the chain is past genesis
        led.append(build_block(led.latest(), {"round": 0}, client_key))
    stale = build_block(GENESIS, {"round": 1}, client_key)
    resp = _post_json(f"{url}/blocks", stale.to_json())
    assert resp.status_code == 409 and "already committed" in resp.json()["detail"]


def test_verify_reports_unreachable_remote(tmp_path: Path) -> None:
    assert ledger_cli(["verify", "http://127.0.0.1:9"]) == 2


def test_forged_transaction_forwarded_by_a_faulty_node_never_commits(
    cluster: LocalCluster, client_key: SigningKey
) -> None:
    """A faulty node forwards a forged transaction straight to the primary's PBFT port;
    every node rejects that block, the primary drops the forgery and commits the rest."""
    import socket

    from bcsfl_flower.ledger.wire import APP, encode_frame

    url = cluster.urls[0]
    httpx.post(f"{url}/identities", json={"client_id": "client-a",
               "public_key": client_key.public_hex}, timeout=60).raise_for_status()
    good = [make_transaction(client_key, {"num": i}).to_json() for i in range(3)]
    forged = make_transaction(client_key, {"num": 99}).to_json()
    forged["sign"] = "00" * 64
    primary = httpx.get(f"{url}/health", timeout=10).json()["primary"]
    frame = encode_frame(APP, json.dumps({"type": "txs", "txs": [good[0], forged, good[1]],
                                          "hops": 1}).encode())
    with socket.create_connection(("127.0.0.1", cluster.peers[primary].pbft_port)) as sock:
        sock.sendall(frame)
    resp = _post_json(f"{cluster.urls[3]}/postModelUpdate", {"transactions": good})
    assert resp.status_code == 200, resp.text
    converge(cluster.urls)
    chains = [chain(u) for u in cluster.urls]
    assert all(c == chains[0] for c in chains)
    ids = [tx["id"] for b in chains[0] for tx in b["data"].get("transactions", [])]
    assert forged["id"] not in ids
    assert all(ids.count(t["id"]) == 1 for t in good)
