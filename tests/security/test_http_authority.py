"""An outsider with HTTP access against a live 4-node ledger cluster (real processes on 127.0.0.1).

Reads stay open; every write needs authority: an enrolment signed by the federation's
enrolment authority, a model upload signed by an enrolled identity, a round block
certified by the committee the chain draws. Refused writes get 401/403 with a reason and
change nothing on any node; the honest federation then still enrols and commits a round.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import PooledPackage
from bcsfl_flower.ledger import Block, LedgerError, build_block, make_transaction, open_ledger
from bcsfl_flower.ledger.replay import make_enrolment

from ledger_cluster.cluster_helpers import converge, start_cluster
from ledger_kit import Federation


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), 4)
    yield cluster
    cluster.stop()


def _unchanged(http: httpx.Client, url: str, head: dict, stakes: dict) -> None:
    assert http.get(f"{url}/blocks/latest").json() == head
    assert http.get(f"{url}/stakes").json() == stakes


def test_forged_block_over_http_is_refused_and_honest_rounds_still_commit(cluster):
    a, b = cluster.urls[0], cluster.urls[1]
    http = httpx.Client(timeout=60)
    mallory = SigningKey.generate()
    head, stakes = http.get(f"{b}/blocks/latest").json(), http.get(f"{b}/stakes").json()

    # Sybil registration: no enrolment signature, then one Mallory signed herself.
    r = http.post(f"{a}/identities", json={"client_id": "sybil-1", "public_key": mallory.public_hex})
    assert r.status_code in (401, 403), r.text
    r = http.post(f"{a}/identities", json=make_enrolment(mallory, "sybil-1", mallory.public_hex).to_json())
    assert r.status_code in (401, 403) and "enrolment" in r.text, r.text

    # A round block that hands Mallory the stake book, signed by her key, no certificate.
    forged = build_block(Block.from_json(http.get(f"{a}/blocks/latest").json()),
                         {"round": 99, "transactions": [], "stakes": {"mallory": 1e9}}, mallory)
    r = http.post(f"{a}/blocks", content=json.dumps(forged.to_json()), headers={"content-type": "application/json"})
    assert r.status_code == 403, r.text

    # Model uploads: from nobody, and signed by a key no enrolled identity holds.
    blob = b"\x00" * 4096
    r = http.post(f"{a}/models", content=blob, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 401, r.text
    digest = hashlib.sha256(blob).hexdigest()
    sig = mallory.sign(hashlib.sha256(b"bcsfl-model|" + digest.encode()).digest()).hex()
    r = http.post(f"{a}/models", content=blob, headers={"content-type": "application/octet-stream",
                                                         "X-Bcsfl-Client": "sybil-1", "X-Bcsfl-Sign": sig})
    assert r.status_code == 403, r.text
    assert digest not in http.get(f"{b}/models").json()["models"]
    _unchanged(http, b, head, stakes)

    # The honest federation: the operator's key enrols, an enrolled client uploads, the committee certifies.
    authority = SigningKey.load_or_create(cluster.folder / "enrolment.key")
    with open_ledger(a) as remote:
        fed = Federation(remote, authority)
        fed.enrol(f"client-{i}" for i in range(5))
    with open_ledger(a, uploader=("client-0", fed.keys["client-0"])) as remote:
        fed.ledger = remote
        block = fed.commit_round(1, rejected=["client-4"])
        assert remote.state().round == 1
    found = converge(cluster.urls)
    assert {h["head"] for h in found} == {block.hash}
    assert http.get(f"{b}/stakes").json()["stakes"]["client-4"] < http.get(f"{b}/stakes").json()["stakes"]["client-0"]


def test_packages_pool_over_http_only_as_their_clients_signed_them(cluster):
    """``POST /postModelUpdate`` pools a client's package as it signed it; altered or outsiders' posts are refused."""
    a = cluster.urls[0]
    authority = SigningKey.load_or_create(cluster.folder / "enrolment.key")
    with open_ledger(a) as remote:
        fed = Federation(remote, authority)
        fed.enrol(["pool-0", "pool-1"])
    key = fed.keys["pool-0"]
    with open_ledger(a, uploader=("pool-0", key)) as remote:
        fed.ledger = remote
        package = fed.package("pool-0", 7)  # its parameters uploaded under the client's identity
        inflated = PooledPackage({**package.header, "num_examples": 10**9}, package.signature, {})
        with pytest.raises(LedgerError, match="signature does not verify under its enrolled key"):
            remote.post_pool([inflated], key)
        remote.post_pool([package], key)
        assert remote.state().pool["pool-0"].packet_id == package.packet_id
        genuine = fed.package("pool-1", 7)
    # Even a genuine package needs an enrolled carrier at the node's edge.
    tx = make_transaction(SigningKey.generate(), {"pool": [genuine.to_json()]})
    r = httpx.post(f"{a}/postModelUpdate", json=tx.to_json(), timeout=60)
    assert r.status_code == 403, r.text
    with open_ledger(a) as remote:
        assert "pool-1" not in remote.state().pool
