"""Helpers shared by the ledger cluster tests.

A cluster started here is chartered: ``LocalCluster`` writes ``enrolment.key`` and
``charter.json`` into its folder and every node installs that charter as block 1.
:func:`federation` enrols clients through a node's HTTP API with that key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from ledger_kit import Federation

from bcsfl_flower.ledger import open_ledger
from bcsfl_flower.ledger.cluster import LocalCluster


def start_cluster(folder: Path, n: int = 4, *extra: str, **charter: Any) -> LocalCluster:
    """Start ``n`` nodes with fast failure detection and wait until they are ready.

    ``charter`` passes ``LocalCluster`` options for a new charter (``committee_size``,
    ``max_model_bytes``).
    """
    cluster = LocalCluster(n, folder, extra=["--request-timeout", "1.0", *extra], **charter)
    try:
        cluster.start()
        cluster.wait_ready(120)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def federation(cluster: LocalCluster, url: str, clients: int = 0, uploader: str | None = None) -> Federation:
    """A :class:`Federation` over ``url`` with the cluster's enrolment key; enrols ``client-0..``.

    ``uploader`` names the enrolled client whose key signs model uploads (enrolled
    first if it is not yet). Close ``fed.ledger`` when done.
    """
    fed = Federation(open_ledger(url), cluster.authority)
    fed.enrol(f"client-{i}" for i in range(clients))
    if uploader is not None:
        if uploader not in fed.keys:
            fed.enrol([uploader])
        fed.ledger.close()
        fed.ledger = open_ledger(url, uploader=(uploader, fed.keys[uploader]))
    return fed


def health(url: str) -> dict[str, Any]:
    """``GET /health`` of one node."""
    return httpx.get(f"{url}/health", timeout=10).json()


def chain(url: str) -> list[dict[str, Any]]:
    """The whole chain one node serves, read page by page (``next``)."""
    blocks: list[dict[str, Any]] = []
    start: int | None = 0
    while start is not None:
        page = httpx.get(f"{url}/getBlockchain", params={"from": start}, timeout=30).json()
        blocks.extend(page["chain"])
        start = page["next"]
    return blocks


def converge(urls: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until every node reports the same head; return their health."""
    deadline = time.monotonic() + timeout
    while True:
        found = [health(u) for u in urls]
        if len({h["head"] for h in found}) == 1 and not any(h["recovering"] for h in found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError("nodes did not converge: " + "; ".join(
                f"node {h['node']} height {h['height']} head {h['head'][:8]} view {h['view']} "
                f"exec {h['last_executed']} {h['pbft_status']} stats {h['stats']}" for h in found))
        time.sleep(0.1)
