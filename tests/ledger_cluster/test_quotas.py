"""Quotas of a ledger node: bounded bodies and block data, paged chain reads, write rates.

The token bucket and the rate limiter are sans-IO (time is passed in) and tested
without sleeping; the endpoints are tested against a real 4-node cluster whose
quotas are set small through the ``BCSFL_LEDGER_*`` environment variables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest
from ledger_kit import Federation

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import make_transaction, verify_chain
from bcsfl_flower.ledger.cluster import LocalCluster
from bcsfl_flower.ledger.httpio import RateLimiter, TokenBucket, retry_after
from bcsfl_flower.ledger.service import Quotas
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature

from .cluster_helpers import chain, converge, federation, health, start_cluster

# -- sans-IO: the token bucket and the limiter ------------------------------------------


def test_token_bucket_refills_with_time() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert bucket.take(100.25) == pytest.approx(0.25)  # refused: nothing taken
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) > 0
    assert bucket.level(1000.0) == 3.0  # refills up to the burst, no further
    assert bucket.take(999.0) == 0.0  # a clock that steps back does not refill
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_rate_limiter_keys_are_independent_and_all_or_none() -> None:
    lim = RateLimiter(rate=1.0, burst=2)
    assert lim.take(["a"], 0.0) == 0.0 and lim.take(["a"], 0.0) == 0.0
    assert lim.take(["a"], 0.0) == pytest.approx(1.0)
    assert lim.take(["b"], 0.0) == 0.0  # another client is not limited
    assert lim.take(["b", "a"], 0.5) == pytest.approx(0.5)  # a is empty: b is not charged
    assert lim.buckets["b"].level(0.5) == pytest.approx(1.5)
    assert lim.take(["a", "a"], 1.0) == 0.0  # a key named twice pays once
    assert lim.take(["a"], 1.0) > 0
    assert retry_after(0.01) == "1" and retry_after(2.1) == "3"
    off = RateLimiter(rate=0, burst=1)
    assert all(off.take(["x"], 0.0) == 0.0 for _ in range(1000))


def test_rate_limiter_forgets_idle_keys_first() -> None:
    lim = RateLimiter(rate=1.0, burst=1, max_keys=3)
    for k in "abc":
        lim.take([k], 0.0)
    lim.take(["c"], 5.0)  # c is busy again, a and b are full (idle)
    lim.take(["d"], 5.0)
    assert set(lim.buckets) == {"c", "d"}
    assert lim.take(["c"], 5.0) > 0  # a busy key keeps its debt


def test_quotas_from_the_environment() -> None:
    assert Quotas.from_env({}) == Quotas()
    q = Quotas.from_env({"BCSFL_LEDGER_PAGE": "7", "BCSFL_LEDGER_WRITE_RATE": "0.5"})
    assert q.page == 7 and q.write_rate == 0.5 and q.max_page == Quotas().max_page
    with pytest.raises(ValueError, match="BCSFL_LEDGER_PAGE"):
        Quotas.from_env({"BCSFL_LEDGER_PAGE": "many"})
    with pytest.raises(ValueError):
        Quotas(page=50, max_page=10)


# -- a real cluster with small quotas -------------------------------------------------

PAGE, MAX_PAGE = 4, 10
MAX_JSON, MAX_BLOCK_DATA, MAX_TX_DATA = 128 * 1024, 16 * 1024, 2 * 1024
WRITE_BURST, ANON_BURST = 3, 40
ENV = {"BCSFL_LEDGER_PAGE": PAGE, "BCSFL_LEDGER_MAX_PAGE": MAX_PAGE, "BCSFL_LEDGER_MAX_JSON_BODY": MAX_JSON,
       "BCSFL_LEDGER_MAX_BLOCK_DATA": MAX_BLOCK_DATA, "BCSFL_LEDGER_MAX_TX_DATA": MAX_TX_DATA,
       "BCSFL_LEDGER_WRITE_RATE": 0.25, "BCSFL_LEDGER_WRITE_BURST": WRITE_BURST,
       "BCSFL_LEDGER_ANON_RATE": 0.5, "BCSFL_LEDGER_ANON_BURST": ANON_BURST}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """4 nodes started with the small quotas of ``ENV`` (the processes inherit the environment)."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({k: str(v) for k, v in ENV.items()})
    try:
        c = start_cluster(tmp_path_factory.mktemp("quotas"), 4, max_model_bytes=64 * 1024)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def fed(cluster: LocalCluster) -> Iterator[Federation]:
    """Eight clients enrolled through node 0 (one block each): a chain of several pages."""
    f = federation(cluster, cluster.urls[0], clients=8)
    with f.ledger:  # closed on the way out
        yield f


def _post(url: str, body: object, **params: object) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), params=params, timeout=60,  # type: ignore[arg-type]
                      headers={"content-type": "application/json"})


def _heads(cluster: LocalCluster) -> list[tuple[int, str]]:
    return [(h["height"], h["head"]) for h in (health(u) for u in cluster.urls)]


def test_chain_reads_are_paged(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[1]
    converge(cluster.urls)
    height = health(url)["height"]
    assert height > 2 * PAGE
    first = httpx.get(f"{url}/getBlockchain", timeout=10).json()
    assert len(first["chain"]) == PAGE and first["next"] == PAGE and first["height"] == height
    whole = chain(url)  # from=/next page by page
    assert [b["sequenceNo"] for b in whole] == list(range(height))
    by_limit, start = [], 0
    while start < height:
        page = httpx.get(f"{url}/getBlockchain", params={"from": start, "limit": MAX_PAGE}, timeout=10).json()
        assert len(page["chain"]) == min(MAX_PAGE, height - start)
        by_limit += page["chain"]
        start += MAX_PAGE
    assert page["next"] is None and by_limit == whole
    ranged = httpx.get(f"{url}/getBlockchain", params={"start": 1, "end": 3}, timeout=10).json()
    assert [b["sequenceNo"] for b in ranged["chain"]] == [1, 2] and ranged["next"] is None
    past = httpx.get(f"{url}/getBlockchain", params={"from": height + 5}, timeout=10).json()
    assert past["chain"] == [] and past["next"] is None
    # A limit above the maximum page is refused (422), not clamped.
    over = httpx.get(f"{url}/getBlockchain", params={"limit": MAX_PAGE + 1}, timeout=10)
    assert over.status_code == 422 and "limit" in over.text and str(MAX_PAGE) in over.text
    # The remote backend reads the whole chain through the pages and replays it.
    led = fed.ledger
    assert [b.hash for b in led.blocks()] == [b["hash"] for b in whole]
    assert [b.sequence_no for b in led.blocks(PAGE - 1, 2 * PAGE + 1)] == list(range(PAGE - 1, 2 * PAGE + 1))
    assert led.state().key("client-7") == fed.keys["client-7"].public_hex
    assert verify_chain(led, authority=cluster.authority.public_hex).ok


def test_oversized_bodies_and_data_are_refused_and_change_nothing(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[2]
    converge(cluster.urls)
    before = _heads(cluster)
    head = fed.ledger.latest()
    block = {"hash": "0" * 64, "lastHash": head.hash, "timestamp": 1.0, "public": "1" * 64, "sign": "2" * 128,
             "sequenceNo": head.sequence_no + 1, "data": {"pad": "x" * MAX_BLOCK_DATA}}
    resp = _post(f"{url}/blocks", block)
    assert resp.status_code == 413 and "max_block_data" in resp.json()["detail"], resp.text
    key = fed.keys["client-1"]
    fat = make_transaction(key, {"num": 1, "pad": "y" * MAX_TX_DATA})
    resp = _post(f"{url}/postModelUpdate", {"transactions": [fat.to_json()]})
    assert resp.status_code == 413 and "max_tx_data" in resp.json()["detail"], resp.text
    resp = _post(f"{url}/postModelUpdate", {"transactions": ["z" * MAX_JSON]})
    assert resp.status_code == 413 and "max_json_body" in resp.json()["detail"], resp.text
    blob = b"\x03" * (64 * 1024 + 1)  # over the charter's max_model_bytes: refused before it is read
    resp = httpx.post(f"{url}/models", content=blob, timeout=30, headers={
        CLIENT_HEADER: "client-1", SIGN_HEADER: upload_signature(key, sha256_hex(blob))})
    assert resp.status_code == 413 and "max_model_bytes" in resp.json()["detail"], resp.text
    assert _heads(cluster) == before  # nothing ordered on any node
    assert all(sha256_hex(blob) not in httpx.get(f"{u}/models", timeout=10).json()["models"] for u in cluster.urls)


def test_a_client_over_its_write_rate_gets_429_and_others_do_not(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[3]
    greedy, honest = fed.keys["client-2"], fed.keys["client-3"]
    codes = [_post(f"{url}/postModelUpdate", make_transaction(greedy, {"num": i}).to_json(), wait=0).status_code
             for i in range(WRITE_BURST + 2)]
    assert all(c in (200, 202) for c in codes[:WRITE_BURST]) and codes[WRITE_BURST:] == [429, 429], codes
    refused = _post(f"{url}/postModelUpdate", make_transaction(greedy, {"num": 99}).to_json(), wait=0)
    assert refused.status_code == 429 and "too many writes" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    ok = _post(f"{url}/postModelUpdate", make_transaction(honest, {"num": 1}).to_json(), wait=30)
    assert ok.status_code == 200, ok.text  # the honest client at the same time is not limited
    # Model uploads are keyed by X-Bcsfl-Client.
    uploads = []
    for i in range(WRITE_BURST + 1):
        blob = f"update {i} of client-4".encode()
        uploads.append(httpx.post(f"{url}/models", content=blob, params={"wait": 0}, timeout=30, headers={
            CLIENT_HEADER: "client-4", SIGN_HEADER: upload_signature(fed.keys["client-4"], sha256_hex(blob))}))
    assert [r.status_code < 300 for r in uploads] == [True] * WRITE_BURST + [False]
    assert uploads[-1].status_code == 429 and "Retry-After" in uploads[-1].headers
    blob = b"client-5's update"
    resp = httpx.post(f"{url}/models", content=blob, timeout=30, headers={
        CLIENT_HEADER: "client-5", SIGN_HEADER: upload_signature(fed.keys["client-5"], sha256_hex(blob))})
    assert resp.status_code == 200, resp.text
    # The bucket refills: after Retry-After the greedy client may write again.
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    again = _post(f"{url}/postModelUpdate", make_transaction(greedy, {"num": 100}).to_json(), wait=30)
    assert again.status_code == 200, again.text


def test_unauthenticated_writes_are_limited_per_address(cluster: LocalCluster, fed: Federation) -> None:
    url = cluster.urls[3]
    stranger = SigningKey.from_seed(b"quota-stranger")
    start = time.monotonic()
    codes = [_post(f"{url}/postModelUpdate", make_transaction(stranger, {"num": i}).to_json()).status_code
             for i in range(ANON_BURST + 8)]
    elapsed = time.monotonic() - start
    # the burst, then 429s; a slow machine may earn a token back every 2 s (rate 0.5/s) meanwhile
    assert set(codes[:ANON_BURST]) == {403} and set(codes) == {403, 429}, codes
    assert codes.count(403) <= ANON_BURST + int(elapsed * 0.5) + 1
    resp = _post(f"{url}/postModelUpdate", make_transaction(stranger, {"num": 0}).to_json())
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    # An enrolled identity writing from the same address is judged by its own bucket.
    ok = _post(f"{url}/postModelUpdate", make_transaction(fed.keys["client-6"], {"num": 1}).to_json(), wait=30)
    assert ok.status_code == 200, ok.text
    converge(cluster.urls)
