"""Snapshot state transfer: a node behind the stable checkpoint fetches the blocks it lacks.

Nodes run with a small checkpoint interval (``BCSFL_LEDGER_CHECKPOINT_INTERVAL``) so
that a few dozen commits make several checkpoints stable and the peers drop their log
below them. Each node persists its stable checkpoint in its SQLite file and resumes
from it after a restart; a node behind the peers' stable checkpoint fetches the blocks
(and the models they reference) over HTTP, checked against the checkpoint's certified
head, instead of a replay of every committed operation.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import SqliteLedger, make_transaction, open_ledger, verify_chain
from bcsfl_flower.ledger.cluster import LocalCluster

from .cluster_helpers import chain, converge, federation, health, start_cluster

INTERVAL = 4  # a checkpoint every 4 PBFT sequence numbers
WINDOW = 8


def _state_proofs_travel() -> bool:
    """Whether a node can decode a peer's StateProof (the proof a node behind the peers' log needs)."""
    from bcsfl_flower.consensus.messages import StateProof
    from bcsfl_flower.ledger.wire import WireError, decode_message, encode_message

    msg = StateProof(4, "d" * 64, "app", (("client", 3, (1,), 4),), (), 0)
    try:
        return decode_message(encode_message(msg)) == msg
    except WireError:
        return False


needs_state_proofs = pytest.mark.skipif(
    not _state_proofs_travel(), reason="ledger.wire cannot decode a StateProof (its fixed-length tuple check)")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """A fresh 4-node cluster with checkpoints every ``INTERVAL`` sequence numbers."""
    monkeypatch.setenv("BCSFL_LEDGER_CHECKPOINT_INTERVAL", str(INTERVAL))
    monkeypatch.setenv("BCSFL_LEDGER_LOG_WINDOW", str(WINDOW))
    with start_cluster(tmp_path / "snap", 4) as c:  # stopped on the way out
        yield c


def commit(urls: list[str], key: SigningKey, model: str, count: int, tag: str) -> None:
    """Commit ``count`` transactions one request (and so one block) at a time, round robin."""
    with httpx.Client(timeout=30) as http:
        for i in range(count):
            tx = make_transaction(key, {"model-params": model, "tag": tag, "num": i})
            resp = http.post(f"{urls[i % len(urls)]}/postModelUpdate", params={"wait": 20},
                             content=json.dumps(tx.to_json()), headers={"content-type": "application/json"})
            assert resp.status_code == 200, resp.text


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    """Poll ``check()`` until true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------------- the sans-IO parts
def test_the_app_digest_reads_back_and_names_head_state_and_models(tmp_path: Path) -> None:
    from ledger_kit import Federation

    from bcsfl_flower.ledger.snapshot import AppDigest

    with SqliteLedger(tmp_path / "l.db") as led:
        fed = Federation.start(led)
        before = AppDigest.of(led.latest(), led.state(), led.model_digests())
        led.append(fed.tx_block([fed.tx("client-0", model=b"m", n=1)]))
        after = AppDigest.of(led.latest(), led.state(), led.model_digests())
        head = led.latest().hash
    assert AppDigest.parse(after.text()) == after and len(after.text()) <= 512
    assert (after.height, after.head, after.models) == (before.height + 1, head, before.models + 1)
    assert after.federation != before.federation or after.models_digest != before.models_digest
    for bad in ("", "bcsfl-snap1:x:y", after.text().replace("bcsfl-snap1", "v0")):
        with pytest.raises(ValueError):
            AppDigest.parse(bad)


def test_checkpoint_settings_come_from_the_environment() -> None:
    from bcsfl_flower.ledger.snapshot import pbft_settings

    assert pbft_settings({}) == {"app_checkpoints": True}
    assert pbft_settings({"BCSFL_LEDGER_CHECKPOINT_INTERVAL": "4", "BCSFL_LEDGER_LOG_WINDOW": "8"}) == {
        "app_checkpoints": True, "checkpoint_interval": 4, "log_window": 8}
    with pytest.raises(ValueError, match="CHECKPOINT_INTERVAL"):
        pbft_settings({"BCSFL_LEDGER_CHECKPOINT_INTERVAL": "0"})


def test_a_persisted_checkpoint_needs_its_2f_plus_1_signatures() -> None:
    from bcsfl_flower.consensus.dedup import table_digest
    from bcsfl_flower.consensus.messages import Checkpoint, sign
    from bcsfl_flower.consensus.state import StableCheckpoint
    from bcsfl_flower.ledger.snapshot import decode_checkpoint, encode_checkpoint

    keys = [SigningKey.from_seed(f"snap-replica-{i}".encode()) for i in range(4)]
    pubs = [k.public_hex for k in keys]
    proof = tuple(sign(Checkpoint(8, "d" * 64, "app", table_digest(()), i), keys[i]) for i in range(3))
    cp = StableCheckpoint(8, "d" * 64, proof, "app", ())
    assert decode_checkpoint(encode_checkpoint(cp), pubs) == cp
    with pytest.raises(ValueError, match="proof"):
        decode_checkpoint(encode_checkpoint(StableCheckpoint(8, "d" * 64, proof[:2], "app", ())), pubs)
    with pytest.raises(ValueError, match="proof"):  # another app digest than the one signed
        decode_checkpoint(encode_checkpoint(StableCheckpoint(8, "d" * 64, proof, "other", ())), pubs)
    with pytest.raises(ValueError, match="malformed"):
        decode_checkpoint("{}", pubs)


def test_block_fetch_takes_only_the_certified_chain(tmp_path: Path) -> None:
    from ledger_kit import Federation

    from bcsfl_flower.ledger.transfer_plan import BlockFetch, TransferError

    with SqliteLedger(tmp_path / "l.db") as led:
        fed = Federation.start(led)
        for i in range(4):
            led.append(fed.tx_block([fed.tx("client-0", model=b"m%d" % i, n=i)]))
        blocks = led.blocks()
    top = blocks[-1]
    plan = BlockFetch(blocks[3], top.sequence_no + 1, top.hash, page=2)
    pages = []
    while (ask := plan.next_page()) is not None:
        pages.append(ask)
        plan.take({"chain": [b.to_json() for b in blocks[ask[0]:ask[0] + ask[1] + 5]]})  # a peer ahead
    assert plan.done and plan.blocks == blocks[4:] and pages[0] == (4, 2)
    assert len(plan.models()) == 4
    wrong = BlockFetch(blocks[3], top.sequence_no + 1, "0" * 64, page=100)
    with pytest.raises(TransferError, match="not the certified head"):
        wrong.take({"chain": [b.to_json() for b in blocks[4:]]})
    gap = BlockFetch(blocks[3], top.sequence_no + 1, top.hash)
    with pytest.raises(TransferError, match="does not follow"):
        gap.take({"chain": [b.to_json() for b in blocks[5:]]})
    with pytest.raises(TransferError, match="has no block"):
        gap.take({"chain": []})


def test_a_transfer_asks_the_primaries_last() -> None:
    """Serving tens of megabytes of chain pages keeps a node from ordering: the soak's
    lagging backups fetched from the primary, or from the next view's, which was voted
    out meanwhile. The primaries of the current and the next view are asked last."""
    from bcsfl_flower.ledger.transfer_plan import peer_order

    urls = ["u0", "u1", "u2", "u3"]
    assert peer_order(urls, 3, 0) == ["u0", "u1", "u2"]  # none named: in turn
    assert peer_order(urls, 3, 0, busy=(0, 1)) == ["u2", "u1", "u0"]  # the current primary last
    assert peer_order(urls, 3, 1, busy=(0,)) == ["u2", "u1", "u0"]  # the next attempt, the next peer
    assert peer_order(urls, 1, 0, busy=(1, 2)) == ["u0", "u3", "u2"]  # itself a primary: not listed
    assert peer_order(urls, 2, 0, busy=(3, 0)) == ["u1", "u0", "u3"]
    assert peer_order(["u0", "u1"], 1, 5, busy=(0,)) == ["u0"]  # the primary is the only peer: still asked



@pytest.mark.slow
@needs_state_proofs
def test_a_restarted_node_catches_up_by_snapshot_not_by_replaying_the_log(cluster: LocalCluster) -> None:
    fed = federation(cluster, cluster.urls[0], uploader="writer")
    with fed.ledger:
        model = fed.ledger.put_model(b"snapshot test model")
    key = fed.keys["writer"]
    commit(cluster.urls, key, model, 6, "before")
    converge(cluster.urls)
    primary = health(cluster.urls[0])["primary"]
    victim = (primary + 1) % cluster.n
    wait_for("a persisted checkpoint", lambda: health(cluster.urls[victim])["snapshot"]["persisted_seq"] > 0)
    cluster.kill(victim, signal.SIGKILL)
    with SqliteLedger(cluster.db_path(victim), read_only=True) as local:
        had = local.height()  # what the victim's file holds
    live = [u for j, u in enumerate(cluster.urls) if j != victim]
    commit(live, key, model, 6 * INTERVAL, "while down")  # several checkpoints: the peers' log is cut
    with open_ledger(live[0], uploader=("writer", key)) as remote:  # late: not among frames queued for it
        fresh = remote.put_model(b"a model uploaded while the victim is down")
    commit(live, key, fresh, 2 * INTERVAL, "while down, new model")
    assert min(health(u)["stable_seq"] for u in live) > 4 * INTERVAL
    cluster.start(victim)
    cluster.wait_ready(60, nodes=[victim])
    converge(cluster.urls)
    commit(cluster.urls, key, model, 2 * INTERVAL, "after")  # and it takes part again
    heads = converge(cluster.urls)
    chains = [chain(u) for u in cluster.urls]
    assert all(c == chains[0] for c in chains), "nodes hold different chains"
    snap = heads[victim]["snapshot"]
    persisted = snap.get("resumed_from")
    assert persisted and persisted > 0, snap  # it resumed from its own file
    last = snap["last"]
    assert snap["transfers"] == 1 and last is not None, snap
    # Fetched: exactly the blocks its file lacked when the transfer began (frames the peers had
    # queued for it while it was down may have brought a few first), not the whole chain.
    assert had > 3 and last["from_height"] >= had, (last, had)
    assert snap["blocks_fetched"] == last["height"] - last["from_height"] >= 2 * INTERVAL, snap
    assert last["height"] < len(chains[0])
    assert snap["models_fetched"] == 1 and snap["model_set_differs"] == 0, snap  # the one its blocks need
    # Not replayed: each fetched block stands for at least one sequence number it never executed.
    executed = heads[victim]["stats"]["executed_ops"]
    assert executed <= heads[victim]["last_executed"] - persisted - snap["blocks_fetched"], (executed, snap)
    with SqliteLedger(cluster.db_path(victim), read_only=True) as local:
        assert verify_chain(local, authority=cluster.authority.public_hex).ok


@pytest.mark.slow
@needs_state_proofs
def test_a_cleanly_stopped_node_resumes_from_its_persisted_checkpoint(cluster: LocalCluster) -> None:
    fed = federation(cluster, cluster.urls[0], uploader="writer")
    with fed.ledger:
        model = fed.ledger.put_model(b"resume test model")
    commit(cluster.urls, fed.keys["writer"], model, 3 * INTERVAL, "before")
    converge(cluster.urls)
    victim = (health(cluster.urls[0])["primary"] + 2) % cluster.n
    wait_for("a persisted checkpoint", lambda: health(cluster.urls[victim])["snapshot"]["persisted_seq"] > 0)
    cluster.kill(victim, signal.SIGTERM)
    cluster.start(victim)
    wait_for("the node's HTTP", lambda: _up(cluster.urls[victim]))
    first = health(cluster.urls[victim])
    resumed = first["snapshot"].get("resumed_from")
    assert resumed and resumed % INTERVAL == 0, first["snapshot"]
    assert first["last_executed"] >= resumed and first["stable_seq"] >= resumed
    cluster.wait_ready(60, nodes=[victim])
    converge(cluster.urls)
    assert health(cluster.urls[victim])["snapshot"]["transfers"] == 0  # nothing was missing


def _up(url: str) -> bool:
    try:
        health(url)
    except (httpx.HTTPError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------- a peer that lies
class _Liar:
    """A real HTTP server on 127.0.0.1 that serves a node's answers, one block altered.

    ``mode`` "tamper": a transaction of block ``seq`` is changed (its hash no longer
    matches); "forge": block ``seq`` is rebuilt with a later timestamp and signed by the
    liar's own key (a well-formed block, not the certified chain's).
    """

    def __init__(self, upstream: str, seq: int, mode: str) -> None:
        import http.server
        import threading

        from bcsfl_flower.ledger import Block, build_block

        liar_key = SigningKey.from_seed(b"snapshot-test-liar")
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                resp = httpx.get(upstream + self.path, timeout=30)
                body = resp.content
                if self.path.startswith("/getBlockchain") and resp.status_code == 200:
                    page = resp.json()
                    for i, obj in enumerate(page["chain"]):
                        if obj["sequenceNo"] != seq:
                            continue
                        outer.served += 1
                        if mode == "tamper":
                            obj["data"]["transactions"][0]["data"]["tag"] = "altered"
                        else:
                            block = Block.from_json(obj)
                            prev = Block.from_json(page["chain"][i - 1]) if i else None
                            assert prev is not None, "the forged block needs its predecessor on the page"
                            obj.update(build_block(prev, block.data, liar_key,
                                                   timestamp=block.timestamp + 1).to_json())
                    body = json.dumps(page).encode()
                self.send_response(resp.status_code)
                self.send_header("content-type", resp.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.served = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_peer_serving_a_wrong_block_is_detected_and_the_next_peer_used(tmp_path: Path) -> None:
    from bcsfl_flower.ledger.statefetch import transfer
    from bcsfl_flower.ledger.transfer_plan import FetchLimits

    cluster = start_cluster(tmp_path / "liar", 4, "--page-size", "2", "--max-page", "2")  # asked 5: refused
    liars: list[_Liar] = []
    try:
        fed = federation(cluster, cluster.urls[0], uploader="writer")
        with fed.ledger:
            model = fed.ledger.put_model(b"liar test model")
        commit(cluster.urls, fed.keys["writer"], model, 8, "liar")
        top = converge(cluster.urls)[0]
        height, head = top["height"], top["head"]
        models = len(httpx.get(f"{cluster.urls[0]}/models", timeout=10).json()["models"])
        liars = [_Liar(cluster.urls[1], 5, "tamper"), _Liar(cluster.urls[2], 7, "forge")]
        with SqliteLedger(tmp_path / "fresh.db") as fresh:
            fresh.install_charter(cluster.charter)
            done = transfer(fresh, height, head, models, [liars[0].url, liars[1].url, cluster.urls[3]],
                            FetchLimits(page=5))
            assert [lie.served for lie in liars] == [1, 1]
            assert done.peer == cluster.urls[3] and len(done.errors) == 2, done.errors
            assert "does not hash" in done.errors[0] and "lastHash" in done.errors[1], done.errors
            assert len(done.blocks) == height - 2 and done.models == models  # all but genesis and charter
            assert fresh.latest().hash == head
            assert [b.to_json() for b in fresh.blocks()] == chain(cluster.urls[0])
    finally:
        for lie in liars:
            lie.close()
        cluster.stop()


@pytest.mark.slow
@needs_state_proofs
def test_the_whole_cluster_restarts_from_its_persisted_checkpoints(cluster: LocalCluster) -> None:
    fed = federation(cluster, cluster.urls[0], uploader="writer")
    with fed.ledger:
        model = fed.ledger.put_model(b"full restart model")
    commit(cluster.urls, fed.keys["writer"], model, 3 * INTERVAL + 1, "before")
    before = converge(cluster.urls)
    cluster.stop()  # SIGTERM to every node
    cluster.start()
    cluster.wait_ready(60)
    resumed = [health(u)["snapshot"].get("resumed_from") for u in cluster.urls]
    assert all(r and r >= 2 * INTERVAL for r in resumed), resumed
    commit(cluster.urls, fed.keys["writer"], model, 2 * INTERVAL, "after")
    after = converge(cluster.urls)
    assert after[0]["height"] == before[0]["height"] + 2 * INTERVAL
    chains = [chain(u) for u in cluster.urls]
    assert all(c == chains[0] for c in chains), "nodes hold different chains"
