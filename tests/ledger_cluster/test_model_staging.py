"""The pieces of content-addressed uploads without a cluster: receipts (pure) and the staging folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger.block import LedgerError
from bcsfl_flower.ledger.receipts import check_receipt, check_receipts, make_receipt, needed
from bcsfl_flower.ledger.staging import Staging

NODES = [SigningKey.from_seed(f"staging-node-{j}".encode()) for j in range(4)]
KEYS = [k.public_hex for k in NODES]
DATA = b"model bytes"
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_receipts_need_f_plus_one_distinct_valid_signers() -> None:
    assert [needed(n) for n in (1, 3, 4, 7)] == [1, 1, 2, 3]
    good = [make_receipt(j, NODES[j], DIGEST, len(DATA)) for j in (2, 0)]
    assert check_receipts(good, DIGEST, len(DATA), KEYS) == [2, 0]
    assert check_receipts([*good, make_receipt(3, NODES[3], DIGEST, len(DATA))], DIGEST, len(DATA), KEYS)
    refused = {
        "are needed": good[:1],
        "repeat a replica": [good[0], good[0]],
        "not its signature": [good[0], make_receipt(1, NODES[0], DIGEST, len(DATA))],  # node 0 poses as 1
        "names no replica": [good[0], {"node": 7, "sign": good[1]["sign"]}],
        "must be {node, sign}": [good[0], {"node": 0}],
    }
    for why, receipts in refused.items():
        with pytest.raises(LedgerError, match=why.replace("{", r"\{").replace("}", r"\}")):
            check_receipts(receipts, DIGEST, len(DATA), KEYS)
    with pytest.raises(LedgerError, match="not its signature"):  # it vouches for (digest, size) together
        check_receipt(good[0], DIGEST, len(DATA) + 1, KEYS)
    with pytest.raises(LedgerError, match="for 4 replicas"):
        check_receipts([*good, *good, good[0]], DIGEST, len(DATA), KEYS)


def test_staging_checks_digests_bounds_its_size_and_survives_a_restart(tmp_path: Path) -> None:
    stage = Staging(tmp_path / "s", max_bytes=100, max_count=3)
    assert stage.put(DATA) == DIGEST and stage.get(DIGEST) == DATA and stage.has(DIGEST)
    blobs = [bytes([i]) * 40 for i in range(3)]
    digests = [stage.put(b) for b in blobs]
    assert not stage.has(DIGEST) and not stage.has(digests[0])  # oldest evicted: 11 + 120 > 100 bytes
    assert stage.stats() == {"models": 2, "bytes": 80, "evicted": 2}
    again = Staging(tmp_path / "s", max_bytes=100, max_count=3)  # a restart keeps what was staged
    assert again.get(digests[2]) == blobs[2]
    (tmp_path / "s" / digests[1]).write_bytes(b"bit rot")
    assert again.get(digests[1]) is None and not again.has(digests[1])  # re-checked, dropped
    again.discard(digests[2])
    assert again.stats()["models"] == 0 and not list((tmp_path / "s").iterdir())
    with pytest.raises(ValueError):
        again.put(b"x", "../x")  # only digests name files
