"""The traffic of the ledger soak: signed load, abuse, and the burst of big model uploads.

:class:`Load` posts pre-signed transaction batches (signed by
:func:`experiments.ledger_throughput._sign_chunk`, the throughput benchmark's own
generator, in a worker process that keeps a buffer ahead) to ``POST /postModelUpdate``,
paced at a target rate; a client that cannot reach its node re-sends the same batch to
the next node (safe: a re-sent transaction is answered with its original block). Every
answer that says a transaction committed is recorded with the blocks it names.

:func:`abuse` sends one request a client should never get anything but a 4xx for, and
:func:`burst` the concurrent 16 MiB model uploads of an enrolled identity.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import httpx

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import make_enrolment, make_transaction
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature
from experiments.ledger_throughput import _sign_chunk

__all__ = ["ABUSE_KINDS", "Load", "abuse", "burst", "client_seed"]

_JSON = {"content-type": "application/json"}


def client_seed(c: int) -> bytes:
    """Key seed of load client ``c`` (the throughput benchmark's, so its signer serves here)."""
    return f"bench-client-{c}".encode()


class Load:
    """Signed transactions from ``clients`` enrolled keys, paced, with failover and records.

    Parameters
    ----------
    urls : Sequence[str]
        Every node's base URL; client ``c`` starts at node ``c mod N``.
    clients : int
        Concurrent clients (one enrolled key each, seeds :func:`client_seed`).
    batch : int
        Transactions per request.
    model : str
        Digest of a stored model the transactions reference.
    signer : Executor
        Where batches are signed (a process pool: signing is the client's cost).
    wait : float (default: 10.0)
        Seconds a node may hold a request for its commit (the ``wait`` query).

    Attributes
    ----------
    acked : dict[str, tuple[int, ...]]
        Transaction id -> blocks the commit answer named.
    unanswered : list[bytes]
        Batches with a transaction not answered as committed (re-sent by :meth:`drain`).
    """

    def __init__(self, urls: Sequence[str], clients: int, batch: int, model: str, signer: Executor,
                 wait: float = 10.0) -> None:
        self.urls, self.clients, self.batch, self.model = list(urls), clients, batch, model
        self.signer, self.wait = signer, wait
        self.buffers: list[deque[bytes]] = [deque() for _ in range(clients)]
        self.acked: dict[str, tuple[int, ...]] = {}
        self.unanswered: list[bytes] = []
        self.refused: Counter[str] = Counter()  # answers other than 200/202/429 to honest load
        self.sent = 0
        self.starved_s = 0.0
        self.rate = 0.0  # transactions per second to offer (0: as fast as answered)
        self.stop = asyncio.Event()

    def buffered(self) -> int:
        """Transactions signed and not yet sent."""
        return sum(len(b) for b in self.buffers) * self.batch

    async def refill(self, ahead_s: float = 20.0, min_txs: int = 20_000) -> None:
        """Keep ``ahead_s`` seconds of load signed ahead (at least ``min_txs``) until stopped."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            want = max(min_txs, int(self.rate * ahead_s))
            if self.buffered() >= want:
                await asyncio.sleep(0.2)
                continue
            c = min(range(self.clients), key=lambda i: len(self.buffers[i]))
            bodies = await loop.run_in_executor(
                self.signer, _sign_chunk, (client_seed(c), 4 * self.batch, self.batch, self.model))
            self.buffers[c].extend(bodies)

    async def _next(self, c: int) -> bytes | None:
        t0 = time.monotonic()
        while not self.buffers[c]:
            if self.stop.is_set():
                return None
            await asyncio.sleep(0.05)
        self.starved_s += time.monotonic() - t0
        return self.buffers[c].popleft()

    async def client(self, c: int, http: httpx.AsyncClient) -> None:
        """Post client ``c``'s batches at its share of :attr:`rate` until stopped."""
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.rate > 0:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # fell behind (a stall): catch up by one batch at most, never in a flood
                next_at = max(next_at + self.clients * self.batch / self.rate, time.monotonic() - 1.0)
            body = await self._next(c)
            if body is None:
                return
            await self.post(http, body, c)

    async def post(self, http: httpx.AsyncClient, body: bytes, start: int, wait: float | None = None,
                   rounds: int = 2, deadline: float = float("inf")) -> bool:
        """Post one batch, failing over node by node (``rounds`` times round the nodes, no new try
        after ``deadline``, a monotonic time); record the answer. True if fully committed."""
        ids = [tx["id"] for tx in json.loads(body)["transactions"]]
        self.sent += len(ids)
        n, wait = len(self.urls), self.wait if wait is None else wait
        for attempt in range(rounds * n):
            if time.monotonic() > deadline:
                break
            url = self.urls[(start + attempt) % n]
            try:
                resp = await http.post(f"{url}/postModelUpdate", content=body, headers=_JSON,
                                       params={"wait": wait}, timeout=wait + 10)
            except httpx.HTTPError:
                continue  # killed or frozen: the next node (same batch, exactly once)
            if resp.status_code == 429:
                await asyncio.sleep(min(2.0, float(resp.headers.get("Retry-After", "1"))))
                continue
            if resp.status_code not in (200, 202):
                self.refused[str(resp.status_code)] += 1
                return False
            answer = resp.json()
            pending, blocks = set(answer["pending"]), tuple(answer["blocks"])
            for tid in ids:
                if tid not in pending:
                    self.acked[tid] = tuple(sorted(set(self.acked.get(tid, ())) | set(blocks)))
            if pending:
                self.unanswered.append(body)
            return not pending
        self.unanswered.append(body)
        return False

    async def drain(self, http: httpx.AsyncClient, wait: float = 20.0, budget_s: float = 120.0,
                    workers: int = 8) -> int:
        """Re-send every batch not answered as committed (``workers`` at a time, for at most
        ``budget_s`` seconds); return how many batches still are not."""
        todo, self.unanswered = deque(self.unanswered), []
        deadline = time.monotonic() + budget_s
        left = 0

        async def worker(w: int) -> None:
            nonlocal left
            while todo:
                body = todo.popleft()
                if not await self.post(http, body, w, wait=min(wait, max(1.0, deadline - time.monotonic())),
                                       rounds=2, deadline=deadline):
                    left += 1

        await asyncio.gather(*(worker(w) for w in range(workers)))
        return left


ABUSE_KINDS = ("huge_declared_body", "oversized_body", "oversized_model", "malformed_json", "unsigned_tx",
               "forged_tx", "tampered_tx", "unsigned_upload", "forged_enrolment", "huge_page")


def _raw_declared(url: str, path: str, length: int, timeout: float = 5.0) -> str:
    """POST headers that declare ``length`` body bytes, send none; the status line's code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        head = sock.recv(64).decode("latin-1")
    parts = head.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"no HTTP status: {head!r}")
    return parts[1]


async def abuse(http: httpx.AsyncClient, url: str, kind: str, enrolled: SigningKey, model: str,
                max_json_body: int, max_model_bytes: int) -> str:
    """Send one abusive request of ``kind`` to ``url``; the answer's status, or ``"unreachable"``.

    Parameters
    ----------
    http : httpx.AsyncClient
        The client to send with.
    url : str
        A node's base URL.
    kind : str
        One of :data:`ABUSE_KINDS`.
    enrolled : SigningKey
        An enrolled key (a tampered transaction is one it signed, then altered).
    model : str
        A stored model's digest (so that only the abuse is wrong).
    max_json_body, max_model_bytes : int
        The node's bounds (oversized bodies are one byte over).
    """
    stranger = SigningKey.from_seed(os.urandom(32))
    tx = make_transaction(enrolled, {"model-params": model, "model-acc": 0.5, "num": 1}).to_json()
    try:
        if kind == "huge_declared_body":  # a length no node may buffer: refused from the headers
            return await asyncio.to_thread(_raw_declared, url, "/postModelUpdate", 2**40)
        if kind == "oversized_model":
            return await asyncio.to_thread(_raw_declared, url, "/models", max_model_bytes + 1)
        if kind == "oversized_body":
            body = b'{"transactions":["' + b"x" * max_json_body + b'"]}'
            resp = await http.post(f"{url}/postModelUpdate", content=body, headers=_JSON)
        elif kind == "malformed_json":
            resp = await http.post(f"{url}/postModelUpdate", content=b'{"transactions": [', headers=_JSON)
        elif kind == "unsigned_tx":
            resp = await http.post(f"{url}/postModelUpdate", json={k: v for k, v in tx.items() if k != "sign"})
        elif kind == "forged_tx":  # signed, by a key nobody enrolled
            forged = make_transaction(stranger, {"model-params": model, "model-acc": 0.5, "num": 1})
            resp = await http.post(f"{url}/postModelUpdate", json=forged.to_json())
        elif kind == "tampered_tx":  # an enrolled key's transaction, altered after signing
            resp = await http.post(f"{url}/postModelUpdate", json={**tx, "data": {**tx["data"], "num": 2}})
        elif kind == "unsigned_upload":
            resp = await http.post(f"{url}/models", content=os.urandom(1024))
        elif kind == "forged_enrolment":  # an enrolment signed by someone who is not the authority
            fake = make_enrolment(stranger, f"intruder-{random.randrange(10**9)}", stranger.public_hex)
            resp = await http.post(f"{url}/identities", json=fake.to_json())
        elif kind == "huge_page":
            resp = await http.get(f"{url}/getBlockchain", params={"from": 0, "limit": 10**9})
        else:
            raise ValueError(f"unknown abuse kind {kind!r}")
    except (httpx.HTTPError, OSError):
        return "unreachable"
    return str(resp.status_code)


async def burst(urls: Sequence[str], client_id: str, key: SigningKey, count: int, size: int,
                alive: Callable[[int], bool], wait: float = 60.0) -> list[tuple[str, str]]:
    """``count`` concurrent uploads of ``size`` random bytes by enrolled ``client_id``.

    Returns
    -------
    list[tuple[str, str]]
        ``(digest, answer)`` per upload: an HTTP status, or the error's type name.
    """
    blobs = [os.urandom(size) for _ in range(count)]
    digests = [sha256_hex(b) for b in blobs]
    nodes = [j for j in range(len(urls)) if alive(j)] or list(range(len(urls)))

    async def one(i: int, http: httpx.AsyncClient) -> tuple[str, str]:
        headers = {CLIENT_HEADER: client_id, SIGN_HEADER: upload_signature(key, digests[i]),
                   "content-type": "application/octet-stream"}
        try:
            resp = await http.post(f"{urls[nodes[i % len(nodes)]]}/models", content=blobs[i],
                                   params={"wait": wait}, headers=headers)
        except httpx.HTTPError as err:
            return digests[i], type(err).__name__
        return digests[i], str(resp.status_code)

    async with httpx.AsyncClient(timeout=httpx.Timeout(wait + 60)) as http:
        return list(await asyncio.gather(*(one(i, http) for i in range(count))))
