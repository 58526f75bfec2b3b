"""``RemoteLedger``: the ``Ledger`` interface over HTTP to a cluster of ledger nodes.

Writes (``append``, ``put_model``, ``register_identity``) are ordered by PBFT and
executed on every node; they return once the node they were sent to has executed
them, so a later read from the same node sees them. ``append`` keeps the local
semantics: a block that does not follow the head or the federation's rules raises
``LedgerError`` with the cluster's reason. ``register_identity`` submits the
enrolment authority's signed transaction; ``put_model`` signs the upload as the
enrolled identity given as ``uploader``. Reads come from one node; if it cannot be
reached the client moves to the next node the cluster advertised.

Nothing a node serves is taken on trust: model bytes are checked against their SHA-256
key (``get_model``), and ``state()`` (identities, stakes, the next committee) is
replayed here from the served blocks with the same checks ``append`` runs (structure,
signatures, certificates), incrementally, so a node that lies about the chain is
detected rather than believed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.federation import FederationState, PooledPackage

from .base import Ledger, superseded
from .block import Block, BlockRow, LedgerError, Transaction, canonical_json
from .replay import Replay, advance, enrolment_of, genesis_replay, pool_transaction
from .upload import CLIENT_HEADER, SIGN_HEADER, upload_signature

__all__ = ["RemoteLedger"]

_WRITE_WAIT = 60.0


class RemoteLedger(Ledger):
    """A ledger cluster reached over HTTP.

    Parameters
    ----------
    url : str
        Base URL of one node, e.g. ``"http://127.0.0.1:8000"``.
    timeout : float (default: 90.0)
        Seconds per HTTP request (writes wait up to a minute for their commit).
    uploader : tuple[str, SigningKey] | None (default: None)
        The enrolled identity ``(client_id, key)`` that signs model uploads; without
        one, ``put_model`` only succeeds for models the cluster already stores.
    """

    def __init__(self, url: str, timeout: float = 90.0,
                 uploader: tuple[str, SigningKey] | None = None) -> None:
        self.url = url.rstrip("/")
        self.uploader = uploader
        self._replay: Replay = genesis_replay()
        self._urls = [self.url]
        self._client = httpx.Client(timeout=timeout)
        try:
            info = self._request("GET", "/node").json()
        except LedgerError:
            self._client.close()
            raise
        peers = info.get("peers") if isinstance(info, dict) else None
        for peer in peers if isinstance(peers, list) else []:
            if isinstance(peer, str) and peer.rstrip("/") not in self._urls:
                self._urls.append(peer.rstrip("/"))

    # -- plumbing ------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt, base in enumerate(list(self._urls)):
            try:
                resp = self._client.request(method, base + path, **kwargs)
            except httpx.TransportError as err:
                last = err
                continue
            if attempt:  # stick to the node that answered
                self._urls.remove(base)
                self._urls.insert(0, base)
            return resp
        raise LedgerError(f"no ledger node reachable at {self._urls}: {last}")

    @staticmethod
    def _detail(resp: httpx.Response) -> str:
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        return str(detail) if detail else f"HTTP {resp.status_code}"

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise LedgerError(f"{method} {path}: {self._detail(resp)}")
        return resp.json()

    def _poll(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + _WRITE_WAIT
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.1)
        raise LedgerError(f"{what} was not committed within {_WRITE_WAIT:.0f}s")

    # -- chain ---------------------------------------------------------------------
    def latest(self) -> Block:
        return Block.from_json(self._json("GET", "/blocks/latest"))

    def block(self, seq: int) -> Block:
        resp = self._request("GET", f"/blocks/{int(seq)}")
        if resp.status_code in (404, 422):
            raise KeyError(seq)
        if resp.status_code >= 400:
            raise LedgerError(f"GET /blocks/{seq}: {self._detail(resp)}")
        return Block.from_json(resp.json())

    def _page(self, start: int, end: int | None = None) -> tuple[list[Any], int | None]:
        """One page of ``GET /getBlockchain`` from ``start`` (the node's page length): the
        blocks and the ``from`` of the next page (None after the last)."""
        params: dict[str, int] = {"from": start}
        if end is not None:
            params["end"] = end
        page = self._json("GET", "/getBlockchain", params=params)
        chain = page.get("chain") if isinstance(page, dict) else None
        if not isinstance(chain, list):
            raise LedgerError("GET /getBlockchain: no chain in the answer")
        nxt = page.get("next")
        if not chain or not isinstance(nxt, int) or isinstance(nxt, bool) or nxt <= start:
            nxt = None  # the last page (or a node that does not page: it sent everything)
        return chain, nxt

    def _chain(self, start: int = 0, end: int | None = None) -> list[Any]:
        """Blocks ``start <= sequenceNo < end`` as served, read page by page."""
        pos: int | None = max(0, start)
        out: list[Any] = []
        while pos is not None and (end is None or pos < end):
            chain, pos = self._page(pos, end)
            out.extend(chain)
        return out

    def blocks(self, start: int = 0, end: int | None = None) -> list[Block]:
        return [Block.from_json(obj) for obj in self._chain(start, end)]

    def height(self) -> int:
        return int(self._json("GET", "/health")["height"])

    def append(self, block: Block) -> None:
        if not isinstance(block, Block):
            raise LedgerError("append expects a Block")
        resp = self._request("POST", "/blocks", json=block.to_json(),
                             params={"wait": _WRITE_WAIT})
        if resp.status_code == 202:
            self._poll(lambda: self._holds(block), f"block {block.sequence_no}")
            return
        if resp.status_code >= 400:
            raise LedgerError(self._detail(resp))

    def _holds(self, block: Block) -> bool:
        try:
            return self.block(block.sequence_no).hash == block.hash
        except KeyError:
            return False

    # -- model store ---------------------------------------------------------------
    def put_model(self, data: bytes, digest: str | None = None) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("put_model expects bytes")
        data = bytes(data)
        digest = digest or sha256_hex(data)  # the cluster hashes what it stores and answers with it
        if self.uploader is None:
            if self.has_model(digest):
                return digest
            raise LedgerError("uploading a model to a ledger cluster needs an enrolled identity's signature: "
                              "open it with RemoteLedger(url, uploader=(client_id, key))")
        client, key = self.uploader
        headers = {"content-type": "application/octet-stream", CLIENT_HEADER: client,
                   SIGN_HEADER: upload_signature(key, digest)}
        resp = self._request("POST", "/models", content=data, params={"wait": _WRITE_WAIT}, headers=headers)
        if resp.status_code == 202:
            self._poll(lambda: self.has_model(digest), f"model {digest}")
            return digest
        if resp.status_code >= 400:
            raise LedgerError(f"POST /models: {self._detail(resp)}")
        if resp.json().get("hash") != digest:
            raise LedgerError("the cluster stored the model under another hash")
        return digest

    def has_model(self, digest: str) -> bool:
        return self._request("GET", f"/models/{digest}").status_code == 200

    def read_model_raw(self, digest: str) -> bytes:
        resp = self._request("GET", f"/models/{digest}")
        if resp.status_code in (404, 422):
            raise KeyError(digest)
        if resp.status_code >= 400:
            raise LedgerError(f"GET /models/{digest}: {self._detail(resp)}")
        return resp.content

    def model_digests(self) -> list[str]:
        models = self._json("GET", "/models").get("models")
        return [str(d) for d in models] if isinstance(models, list) else []

    # -- federation state ------------------------------------------------------------
    def state(self) -> FederationState:
        """The federation state after the served head, replayed and checked here.

        Only blocks not seen before are fetched; each is checked like ``append`` checks
        it (structure, signatures, the rules), so a node serving a forged or rewritten
        chain raises ``LedgerError`` instead of being believed.
        """
        rep = self._replay
        chain, more = self._page(rep.head.sequence_no)  # the head checked here, then what follows
        if not chain:
            return rep.state  # a lagging node after a fail-over: what was checked stands
        first = Block.from_json(chain[0])
        if first.hash != rep.head.hash:
            raise LedgerError(f"the ledger node serves another block {first.sequence_no} than before "
                              "(rewritten history or a fork)")
        chain = chain[1:]
        while True:
            for obj in chain:  # each must link to the head before it (advance checks)
                rep = advance(rep, Block.from_json(obj))
            self._replay = rep
            if more is None:
                return rep.state
            chain, more = self._page(more)

    def register_identity(self, enrolment: Transaction) -> None:
        """Submit the enrolment authority's signed enrolment transaction (``POST /identities``)."""
        client_id, public_key, _ = enrolment_of(enrolment)
        resp = self._request("POST", "/identities", json=enrolment.to_json(), params={"wait": _WRITE_WAIT})
        if resp.status_code == 202:
            self._poll(lambda: self.identity(client_id) == public_key, f"enrolment of {client_id}")
            return
        if resp.status_code >= 400:
            raise LedgerError(self._detail(resp))

    def post_pool(self, packages: list[PooledPackage], carrier: SigningKey) -> None:
        """Submit the pool transactions (``POST /postModelUpdate``); answered once committed."""
        pool = self.state().pool
        todo = [p for p in packages if not superseded(p, pool)]
        if not todo:
            return
        body = {"transactions": [pool_transaction(todo, carrier).to_json()]}
        resp = self._request("POST", "/postModelUpdate", json=body,
                             params={"wait": _WRITE_WAIT})
        if resp.status_code >= 400:
            raise LedgerError(self._detail(resp))
        if resp.status_code == 202:
            self._poll(lambda: all(superseded(p, self.state().pool) for p in todo), "pooling the packages")

    # -- raw access ----------------------------------------------------------------
    def block_rows(self) -> Iterator[BlockRow]:
        """Rows as served: ``data`` re-encoded canonically, other fields untouched."""
        for obj in self._chain():
            if not isinstance(obj, dict):
                raise LedgerError("served block is not an object")
            data = obj.get("data")
            yield BlockRow(obj.get("sequenceNo"), obj.get("hash"), obj.get("lastHash"),
                           obj.get("timestamp"),
                           canonical_json(data).decode("ascii") if isinstance(data, dict)
                           else data, obj.get("public"), obj.get("sign"))

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RemoteLedger({self.url!r})"
