"""The node HTTP API and the remote backend against a real 4-node cluster.

Reads are open; every write needs the authority the chain grants, checked on arrival
(401 no authority shown, 403 refused, 413 too large) and again by every node when it
executes. A refused write changes nothing on any node.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_kit import Federation, seeded

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.federation import Certificate
from bcsfl_flower.ledger import (
    GENESIS,
    Block,
    LedgerError,
    SqliteLedger,
    build_block,
    make_enrolment,
    make_transaction,
    open_ledger,
    verify_chain,
)
from bcsfl_flower.ledger.cli import main as ledger_cli
from bcsfl_flower.ledger.cluster import GC_YOUNG_THRESHOLD, LocalCluster
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature
from bcsfl_flower.ledger.wire import APP, encode_frame

from .cluster_helpers import chain, converge, federation, health, start_cluster
from .peer_link import node_link

MAX_BODY = 1024 * 1024
MAX_MODEL = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 4-node cluster: 1 MiB request limit, models up to 64 KiB by its charter."""
    with start_cluster(tmp_path_factory.mktemp("api"), 4, "--max-body", str(MAX_BODY), max_model_bytes=MAX_MODEL) as c:  # stopped on the way out
        yield c


@pytest.fixture(scope="module")
def fed(cluster: LocalCluster) -> Iterator[Federation]:
    """Five clients enrolled through node 1; uploads signed by client-0."""
    f = federation(cluster, cluster.urls[1], clients=5, uploader="client-0")
    with f.ledger:  # closed on the way out
        yield f


def _post_json(url: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), timeout=60,
                      headers={"content-type": "application/json"}, **kw)  # type: ignore[arg-type]


def test_every_node_serves_genesis_charter_and_schema(cluster: LocalCluster) -> None:
    for url in cluster.urls:
        got = httpx.get(f"{url}/getBlockchain", params={"end": 2}, timeout=10).json()
        assert got["chain"] == [GENESIS.to_json(), cluster.charter.to_json()]
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    assert cluster.charter.data["charter"]["enrolment"] == cluster.authority.public_hex
    assert cluster.charter.data["charter"]["max_model_bytes"] == MAX_MODEL
    paths = httpx.get(f"{cluster.urls[0]}/openapi.json", timeout=10).json()["paths"]
    for path in ("/getBlockchain", "/getLatestModel", "/postModelUpdate", "/blocks/{seq}",
                 "/models/{digest}", "/identities", "/stakes", "/health"):
        assert path in paths
    assert httpx.get(f"{cluster.urls[1]}/getLatestModel", timeout=10).status_code == 404


def test_remote_backend_commits_certified_rounds_on_every_node(cluster: LocalCluster, fed: Federation) -> None:
    led = fed.ledger
    assert led.identity("client-0") == fed.keys["client-0"].public_hex
    assert led.identity("nobody") is None
    led.register_identity(fed.enrolment("client-1"))  # the same enrolment again: nothing to do
    with pytest.raises(LedgerError, match="another key"):
        led.register_identity(make_enrolment(fed.authority, "client-1", seeded("other").public_hex))
    start = led.state().round
    for rnd in (start + 1, start + 2):
        block = fed.round_block(rnd, rejected=["client-4"])
        led.append(block)
        led.append(block)  # the same block again: idempotent
    stale = fed.round_block(rnd + 1, head=led.block(1))
    with pytest.raises(LedgerError, match="already committed"):
        led.append(stale)
    digest = block.data["model-params"]
    assert led.get_model(digest) == f"global model of round {rnd}".encode()
    assert verify_chain(led, authority=cluster.authority.public_hex).ok
    heads = converge(cluster.urls)
    assert heads[0]["head"] == block.hash
    assert len({json.dumps(chain(u), sort_keys=True) for u in cluster.urls}) == 1
    latest = httpx.get(f"{cluster.urls[3]}/getLatestModel", params={"include_bytes": True},
                       timeout=10).json()
    assert latest["sequenceNo"] == block.sequence_no and latest["model"]["hash"] == digest
    assert httpx.get(f"{cluster.urls[0]}{latest['model']['url']}", timeout=10).content == \
        f"global model of round {rnd}".encode()
    stakes = httpx.get(f"{cluster.urls[2]}/stakes", timeout=10).json()
    assert stakes["round"] == rnd and stakes["stakes"] == led.state().stakes()
    assert stakes["stakes"]["client-4"] < stakes["stakes"]["client-0"]
    idents = httpx.get(f"{cluster.urls[3]}/identities", timeout=10).json()
    assert idents["client-2"]["public_key"] == fed.keys["client-2"].public_hex
    assert ledger_cli(["verify", cluster.urls[2]]) == 0
    for j in range(cluster.n):
        with SqliteLedger(cluster.db_path(j), read_only=True) as local:
            assert verify_chain(local, authority=cluster.authority.public_hex, head=block.hash).ok


def test_transaction_batches_commit_on_every_node(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[2]
    digest = fed.ledger.put_model(b"client update")
    key = fed.keys["client-0"]
    txs = [make_transaction(key, {"model-params": digest, "model-acc": 0.5, "num": i}) for i in range(300)]
    resp = _post_json(f"{url}/postModelUpdate", {"transactions": [t.to_json() for t in txs]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["committed"] == 300 and resp.json()["pending"] == []
    single = make_transaction(key, {"model-params": digest, "model-acc": 0.1, "num": 1})
    assert _post_json(f"{cluster.urls[0]}/postModelUpdate", single.to_json()).status_code == 200
    # The authority's enrolments may travel with transactions too.
    enrol = make_enrolment(fed.authority, "late-joiner", seeded("late-joiner").public_hex)
    assert _post_json(f"{url}/postModelUpdate", enrol.to_json()).status_code == 200
    fed.keys["late-joiner"] = seeded("late-joiner")  # a client now: it takes part in later rounds
    converge(cluster.urls)
    for u in cluster.urls:
        ids = {tx["id"] for b in chain(u) for tx in b["data"].get("transactions", [])}
        assert {t.id for t in txs} | {single.id, enrol.id} <= ids
    assert httpx.get(f"{url}/identities/late-joiner", timeout=10).json()["role"] == "client"
    # node 2 verified the 300 on arrival and vouched for them; with the primary's block that
    # is f+1 = 2 replicas' word, so the two other nodes did not verify them again (vouch.py)
    stats = [health(u)["stats"] for u in cluster.urls]
    assert stats[2]["vouches_sent"] >= 1 and stats[2]["vouches_refused"] == 0
    assert sorted(s["txs_trusted"] for s in stats)[-2] >= 300
    # Sent to the primary, they are the primary's word only: it asks the next replica to check
    # them and vouch, so again two nodes take them on f+1 replicas' word.
    primary = health(url)["primary"]
    more = [make_transaction(key, {"model-params": digest, "model-acc": 0.5, "num": 1000 + i}) for i in range(300)]
    resp = _post_json(f"{cluster.urls[primary]}/postModelUpdate", {"transactions": [t.to_json() for t in more]})
    assert resp.status_code == 200 and resp.json()["committed"] == 300, resp.text
    converge(cluster.urls)
    after = [health(u)["stats"] for u in cluster.urls]
    helper = (primary + 1) % cluster.n
    assert after[primary]["checks_sent"] >= 1 and after[helper]["txs_checked"] >= 300
    others = [j for j in range(cluster.n) if j not in (primary, helper)]
    assert all(after[j]["txs_trusted"] - stats[j]["txs_trusted"] >= 300 for j in others)
    # node processes run with the collector tuned (cluster._tune_gc): start-up objects frozen
    assert all(h["gc"]["threshold"][0] == GC_YOUNG_THRESHOLD and h["gc"]["frozen"] > 1000
               for h in map(health, cluster.urls))


def _snapshot(cluster: LocalCluster) -> tuple[dict, dict, list[str]]:
    url = cluster.urls[3]
    return (httpx.get(f"{url}/blocks/latest", timeout=10).json(), httpx.get(f"{url}/stakes", timeout=10).json(),
            httpx.get(f"{url}/models", timeout=10).json()["models"])


def test_unauthorised_writes_are_refused_and_change_nothing(cluster: LocalCluster, fed: Federation) -> None:
    url, mallory = cluster.urls[0], SigningKey.from_seed(b"mallory")
    # Blocks to try later, all on the current head: the round's pool block (building the honest
    # round stores its model).
    rnd = fed.ledger.state().round + 1
    fed.ledger.append(fed.pool_block(rnd))
    head = Block.from_json(httpx.get(f"{url}/blocks/latest", timeout=10).json())
    honest = fed.round_block(rnd, head=head)
    cert = Certificate.from_json(honest.data["certificate"])
    sybils = Certificate(cert.statement, tuple(cert.statement.sign(f"s{i}", mallory) for i in range(4)))
    stakes = {**honest.data["stakes"], "client-1": 1e9}
    forged_blocks = [
        (build_block(head, {"round": 99, "transactions": [], "stakes": {"mallory": 1e9}}, mallory), "rules"),
        (fed.round_block(rnd, head=head, certificate=None), "certificate"),
        (fed.round_block(rnd, head=head, certificate=sybils.to_json()), "valid committee signatures"),
        (fed.round_block(rnd, head=head, signers=2), "only 2 valid committee signatures"),
        (fed.round_block(rnd, head=head, stakes=stakes), "stakes do not follow"),
        (build_block(head, {"transactions": [make_transaction(mallory, {"num": 2})]}, mallory),
         "no enrolled identity"),
    ]
    converge(cluster.urls)
    before = _snapshot(cluster)
    # Enrolment: unsigned (401), signed by Mallory (403), the authority's but for a taken id (409).
    for body, status, why in (
        ({"client_id": "sybil", "public_key": mallory.public_hex}, 401, "enrolment signature required"),
        (make_enrolment(mallory, "sybil", mallory.public_hex).to_json(), 403, "not signed by the enrolment"),
        (make_enrolment(fed.authority, "client-2", mallory.public_hex).to_json(), 409, "another key"),
    ):
        resp = _post_json(f"{url}/identities", body)
        assert resp.status_code == status and why in resp.json()["detail"], resp.text
    # Transactions: from a key nobody enrolled, or an enrolment Mallory signed.
    for tx in (make_transaction(mallory, {"num": 1}), make_enrolment(mallory, "sybil", mallory.public_hex)):
        resp = _post_json(f"{url}/postModelUpdate", {"transactions": [tx.to_json()]})
        assert resp.status_code == 403, resp.text
    # Model uploads: no signature (401), an unknown id or a wrong key (403), over the charter (413).
    blob, big = b"\x01" * 4096, b"\x02" * (MAX_MODEL + 1)
    sign_as = {"sybil": mallory, "client-3": mallory}
    assert httpx.post(f"{url}/models", content=blob, timeout=30).status_code == 401
    for cid, key in sign_as.items():
        resp = httpx.post(f"{url}/models", content=blob, timeout=30, headers={
            CLIENT_HEADER: cid, SIGN_HEADER: upload_signature(key, sha256_hex(blob))})
        assert resp.status_code == 403, resp.text
    resp = httpx.post(f"{url}/models", content=big, timeout=30, headers={
        CLIENT_HEADER: "client-3", SIGN_HEADER: upload_signature(fed.keys["client-3"], sha256_hex(big))})
    assert resp.status_code == 413 and "max_model_bytes" in resp.json()["detail"]
    # Blocks: a forged round, one without or with a bad certificate, stakes that do not follow,
    # transactions from an unknown key.
    for block, why in forged_blocks:
        resp = _post_json(f"{url}/blocks", block.to_json())
        assert resp.status_code == 403 and why in resp.json()["detail"], resp.text
    assert _post_json(f"{url}/blocks", {"hash": 1}).status_code == 422
    assert _snapshot(cluster) == before  # on another node: same head, stakes and models
    assert sha256_hex(blob) not in before[2] and sha256_hex(big) not in before[2]
    fed.ledger.append(honest)  # and the honest round still commits
    assert converge(cluster.urls)[0]["head"] == honest.hash


def test_bad_requests_get_4xx_with_a_reason(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[0]
    key = fed.keys["client-0"]
    raw = httpx.post(f"{url}/postModelUpdate", content=b'{"nonsense": [', timeout=10,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "malformed JSON" in raw.json()["detail"]
    stranger = SigningKey.from_seed(b"stranger")
    resp = _post_json(f"{url}/postModelUpdate", make_transaction(stranger, {"num": 1}).to_json())
    assert resp.status_code == 403 and "unknown client" in resp.json()["detail"]
    forged = make_transaction(key, {"num": 2}).to_json()
    forged["sign"] = "00" * 64
    resp = _post_json(f"{url}/postModelUpdate", forged)
    assert resp.status_code == 422 and "invalid signature" in resp.json()["detail"]
    tampered = make_transaction(key, {"num": 3}).to_json()
    tampered["data"]["num"] = 4
    assert "hash does not match" in _post_json(f"{url}/postModelUpdate", tampered).json()["detail"]
    wrong_type = dict(make_transaction(key, {"num": 1}).to_json(), timestamp="soon")
    assert _post_json(f"{url}/postModelUpdate", wrong_type).status_code == 422
    missing_model = make_transaction(key, {"model-params": "ab" * 32}).to_json()
    assert "not stored" in _post_json(f"{url}/postModelUpdate", missing_model).json()["detail"]
    big = httpx.post(f"{url}/models", content=b"x" * (MAX_BODY + 1), timeout=30)
    assert big.status_code == 413 and "exceeds" in big.json()["detail"]
    assert httpx.get(f"{url}/blocks/99999", timeout=10).status_code == 404
    assert httpx.get(f"{url}/blocks/minus-one", timeout=10).status_code == 422
    assert httpx.get(f"{url}/models/not-a-digest", timeout=10).status_code == 422
    assert httpx.get(f"{url}/models/{'0' * 64}", timeout=10).status_code == 404
    assert httpx.get(f"{url}/identities/nobody", timeout=10).status_code == 404
    bad_key = make_enrolment(fed.authority, "x", "nope").to_json()
    assert _post_json(f"{url}/identities", bad_key).status_code == 422
    unsigned = build_block(GENESIS, {"round": 1}, key).to_json()
    unsigned["sign"] = "11" * 64
    assert "signature" in _post_json(f"{url}/blocks", unsigned).json()["detail"]
    stale = build_block(Block.from_json(cluster.charter.to_json()), {"transactions": []}, key)
    resp = _post_json(f"{url}/blocks", stale.to_json())
    assert resp.status_code == 409 and "already committed" in resp.json()["detail"]


def test_verify_reports_unreachable_remote(tmp_path: Path) -> None:
    assert ledger_cli(["verify", "http://127.0.0.1:9"]) == 2


def test_verify_against_a_live_node_catches_a_stale_or_foreign_copy(
    cluster: LocalCluster, fed: Federation, tmp_path: Path
) -> None:
    converge(cluster.urls)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(cluster.db_path(2)) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = cluster.urls[1]
    assert ledger_cli(["verify", str(copy), "--against", url]) == 0
    fed.commit_round(fed.ledger.state().round + 1)  # the cluster moves on; the copy stays behind
    with SqliteLedger(copy, read_only=True) as led:
        report = verify_chain(led, against=url)
    assert not report.ok and report.reason.startswith("truncated or behind: height")
    foreign = tmp_path / "foreign.db"
    with SqliteLedger(foreign) as led:
        Federation.start(led, authority=seeded("forger")).commit_round(1)
        report = verify_chain(led, against=url)
    assert not report.ok and report.first_bad_block == 1 and "rewritten history or a fork" in report.reason


def test_forged_transaction_forwarded_by_a_faulty_node_never_commits(
    cluster: LocalCluster, fed: Federation
) -> None:
    """A faulty node forwards a forged transaction and two conflicting enrolments straight to
    the primary's PBFT port; every node rejects that block, the primary drops what the rules
    refuse and commits the rest."""
    url = cluster.urls[0]
    key = fed.keys["client-1"]
    good = [make_transaction(key, {"num": i}).to_json() for i in range(3)]
    forged = make_transaction(key, {"num": 99}).to_json()
    forged["sign"] = "00" * 64
    first = make_enrolment(fed.authority, "twice", seeded("twice-a").public_hex).to_json()
    second = make_enrolment(fed.authority, "twice", seeded("twice-b").public_hex).to_json()
    primary = httpx.get(f"{url}/health", timeout=10).json()["primary"]
    frame = encode_frame(APP, json.dumps({"type": "txs", "txs": [good[0], forged, first, second, good[1]],
                                          "hops": 1}).encode())
    with node_link(cluster, (primary + 1) % cluster.n, primary) as sock:  # as a faulty node, with its key
        sock.sendall(frame)
    resp = _post_json(f"{cluster.urls[3]}/postModelUpdate", {"transactions": good})
    assert resp.status_code == 200, resp.text
    converge(cluster.urls)
    chains = [chain(u) for u in cluster.urls]
    assert all(c == chains[0] for c in chains)
    ids = [tx["id"] for b in chains[0] for tx in b["data"].get("transactions", [])]
    assert forged["id"] not in ids and second["id"] not in ids
    assert all(ids.count(t["id"]) == 1 for t in good)
    assert httpx.get(f"{url}/identities/twice", timeout=10).json()["public_key"] == seeded("twice-a").public_hex
    fed.keys["twice"] = seeded("twice-a")


def test_remote_state_detects_a_node_serving_a_forged_chain(cluster: LocalCluster, fed: Federation) -> None:
    """Node 3's file is edited under it (a round's stake book raised and the block re-signed):
    it serves the forged block, and a client replaying the state from it refuses to believe it."""
    fed.commit_round(fed.ledger.state().round + 1)
    fed.ledger.append(fed.tx_block([fed.tx("client-0", num=1)]))  # the forged round is not the head
    converge(cluster.urls)
    with open_ledger(cluster.urls[3]) as honest_view:
        rounds = [b for b in honest_view.blocks(1) if "round" in b.data]
        assert honest_view.state().round == len(rounds)
    target = rounds[0]
    mallory = seeded("mallory")
    data = {**target.data, "stakes": {**target.data["stakes"], "client-4": 1e6}}
    forged = dataclasses.replace(target, data=data, public=mallory.public_hex)
    forged = dataclasses.replace(forged, hash=forged.expected_hash())
    forged = dataclasses.replace(forged, sign=mallory.sign(bytes.fromhex(forged.hash)).hex())
    row = target.to_row()
    conn = sqlite3.connect(cluster.db_path(3), isolation_level=None)
    try:
        conn.execute("UPDATE blocks SET hash = ?, data = ?, public = ?, sign = ? WHERE sequence_no = ?",
                     (forged.hash, forged.to_row().data, forged.public, forged.sign, target.sequence_no))
        with open_ledger(cluster.urls[3]) as fooled, pytest.raises(LedgerError, match="stakes do not follow"):
            fooled.state()
        assert ledger_cli(["verify", cluster.urls[3]]) == 1
    finally:
        conn.execute("UPDATE blocks SET hash = ?, data = ?, public = ?, sign = ? WHERE sequence_no = ?",
                     (row.hash, row.data, row.public, row.sign, target.sequence_no))
        conn.close()
    assert ledger_cli(["verify", cluster.urls[3]]) == 0
