"""Model bytes between ledger nodes over HTTP, outside consensus.

Two moves, both async (httpx) so a node's event loop keeps driving PBFT meanwhile:

* :func:`collect_receipts`: the node that received ``POST /models`` sends the bytes,
  with the uploader's own headers, to every peer's ``POST /staged``. Each peer checks
  the upload signature against its own chain state, stages the bytes
  (:mod:`~.staging`) and answers with its storage receipt (:mod:`~.receipts`). The
  receiver keeps the receipts that check out and goes on once it holds f+1 (its own
  among them) and every peer has answered, or a short grace after f+1: a slow peer
  finishes in the background, or fetches the bytes when it executes.
* :func:`fetch_model`: a node executing a ``model`` operation whose bytes it lacks reads
  ``GET /staged/{digest}`` (staged or stored bytes) from each receipt signer in turn,
  then every other peer, and keeps the first answer whose digest and size match.

A peer's answer is never trusted: receipts are checked against the replica keys,
bytes against the digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from bcsfl_flower.crypto import SigningKey

from .block import LedgerError
from .receipts import check_receipt, make_receipt, needed
from .upload import CLIENT_HEADER, SIGN_HEADER

__all__ = ["STAGED", "collect_receipts", "fetch_model"]

log = logging.getLogger(__name__)

STAGED = "/staged"  # POST: stage an upload and get a receipt; GET /staged/{digest}: the bytes
_TRIES = 5  # pushes refused with 403 (uploader unknown there, so far)
_background: set[asyncio.Task[Any]] = set()  # pushes that outlive the upload's request


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail"))[:200]
    except (ValueError, AttributeError):
        return resp.text[:200]


async def _push(http: httpx.AsyncClient, url: str, j: int, data: bytes, digest: str, client: str,
                sign: str, keys: Sequence[str]) -> dict[str, Any]:
    headers = {"content-type": "application/octet-stream", CLIENT_HEADER: client, SIGN_HEADER: sign}
    for attempt in range(_TRIES):
        resp = await http.post(f"{url}{STAGED}", content=data, headers=headers)
        if resp.status_code != 403 or attempt == _TRIES - 1:
            break
        await asyncio.sleep(0.2)  # a peer a few milliseconds behind may not know the uploader yet
    if resp.status_code != 200:
        raise LedgerError(f"node {j}: {resp.status_code} {_detail(resp)}")
    try:
        receipt = resp.json()["receipt"]
    except (ValueError, KeyError, TypeError):
        raise LedgerError(f"node {j}: no receipt in its answer") from None
    if check_receipt(receipt, digest, len(data), keys) != j:
        raise LedgerError(f"node {j}: answered with another node's receipt")
    return receipt


async def collect_receipts(index: int, key: SigningKey, keys: Sequence[str], urls: Sequence[str],
                           data: bytes, digest: str, client: str, sign: str, grace: float = 1.0,
                           timeout: float = 60.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Stage ``data`` on the peers and gather their receipts (the caller staged it here).

    Parameters
    ----------
    index : int
        This node's replica index.
    key : SigningKey
        This node's key (signs its own receipt).
    keys : Sequence[str]
        Every replica's public key in index order (checks the peers' receipts).
    urls : Sequence[str]
        Every node's HTTP base URL in index order (empty: no peer is asked).
    data : bytes
        The model bytes.
    digest : str
        Their SHA-256 hex digest.
    client, sign : str
        The uploader's ``X-Bcsfl-Client`` and ``X-Bcsfl-Sign`` (each peer checks them).
    grace : float (default: 1.0)
        Seconds to wait for the other peers once f+1 receipts are held.
    timeout : float (default: 60.0)
        Seconds to wait in all; a peer's push also times out after it.

    Returns
    -------
    tuple[list[dict[str, Any]], list[str]]
        The valid receipts (this node's first), and why each other peer gave none
        (so far: a push still running after the grace goes on in the background).
    """
    receipts = [make_receipt(index, key, digest, len(data))]
    why: list[str] = []
    peers = [j for j, url in enumerate(urls) if j != index and url]
    if not peers:
        return receipts, why
    want = needed(len(keys))
    http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))
    pending = {asyncio.create_task(_push(http, urls[j], j, data, digest, client, sign, keys)) for j in peers}
    loop = asyncio.get_running_loop()
    deadline, enough_at = loop.time() + timeout, None
    try:
        while pending:
            now = loop.time()
            if len(receipts) >= want:
                enough_at = now if enough_at is None else enough_at
                left = min(enough_at + grace, deadline) - now
            else:
                left = deadline - now
            if left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    receipts.append(task.result())
                except (LedgerError, httpx.HTTPError, OSError) as err:
                    why.append(str(err) or type(err).__name__)
    finally:
        if pending:  # let them finish (those peers then hold the bytes), then close the client
            finisher = asyncio.ensure_future(_finish(http, pending))
            _background.add(finisher)
            finisher.add_done_callback(_background.discard)
        else:
            await http.aclose()
    return receipts, why


async def _finish(http: httpx.AsyncClient, pending: set[asyncio.Task[Any]]) -> None:
    try:
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await http.aclose()


def _matches(data: bytes, digest: str, size: int) -> bool:
    return len(data) == size and hashlib.sha256(data).hexdigest() == digest


async def fetch_model(urls: Sequence[str], digest: str, size: int,
                      timeout: float = 60.0) -> tuple[bytes | None, list[str]]:
    """The bytes of model ``digest`` from the first of ``urls`` that serves them intact.

    Parameters
    ----------
    urls : Sequence[str]
        Node base URLs to ask, in order (receipt signers first).
    digest : str
        SHA-256 hex digest of the bytes.
    size : int
        Their length (a longer answer is cut off and refused).
    timeout : float (default: 60.0)
        Seconds per node.

    Returns
    -------
    tuple[bytes | None, list[str]]
        The bytes (None if no node served them), and why each node asked before failed.
    """
    why: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))) as http:
        for url in urls:
            try:
                async with http.stream("GET", f"{url}{STAGED}/{digest}") as resp:
                    if resp.status_code != 200:
                        why.append(f"{url}: {resp.status_code}")
                        continue
                    chunks, got = [], 0
                    async for chunk in resp.aiter_bytes():
                        got += len(chunk)
                        if got > size:
                            break
                        chunks.append(chunk)
                data = b"".join(chunks)
            except (httpx.HTTPError, OSError) as err:
                why.append(f"{url}: {type(err).__name__}: {err}")
                continue
            if await asyncio.to_thread(_matches, data, digest, size):
                return data, why
            why.append(f"{url}: served bytes that are not model {digest} ({size} bytes)")
    return None, why
