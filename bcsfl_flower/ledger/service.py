"""The HTTP API of a ledger node (FastAPI), the paper's Table 1 plus what users need.

Reads are answered from the node's own SQLite file (chain and model reads in FastAPI's
thread pool; the SQLite backend serialises access), writes are ordered by PBFT and
answered once this node has executed them. Every error is a 4xx with a ``detail``
that says why: 400 malformed JSON, 403 unknown client, 404 not found, 409 refused on
execution (e.g. a block built on a stale head), 413 body too large, 422 wrong types or
an invalid hash or signature, 429 too many transactions already waiting. A write that has not committed within ``wait`` seconds
gets 202 (pending), never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from bcsfl_flower.crypto import sha256_hex

from .block import Block, LedgerError, Transaction, parse_json
from .node import LedgerNode
from .ops import encode_block_op, encode_identity_op, encode_model_op, parse_op
from .rules import check_block, check_transaction, is_digest
from .schemas import BLOCK_SCHEMA, UPDATE_SCHEMA

__all__ = ["create_app"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_TXS_PER_REQUEST = 20_000
MAX_OUTSTANDING_TXS = 200_000  # per node: beyond this, clients are told to back off (429)
_HEX64 = r"^[0-9a-f]{64}$"
_MAX_SEQ = 2**62  # SQLite integers are 64-bit


class IdentityIn(BaseModel):
    """A client identity to register."""

    model_config = {"extra": "forbid"}

    client_id: str = Field(min_length=1, max_length=256)
    public_key: str = Field(pattern=_HEX64, description="Ed25519 public key, 64 hex chars")
    role: str = Field(default="client", min_length=1, max_length=64)


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Callable[[Any], Awaitable[None]]) -> None:
        body = json.dumps({"detail": f"request body exceeds {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise HTTPException(400, "empty body: expected JSON")
    try:
        return parse_json(raw)
    except LedgerError as err:
        raise HTTPException(400, f"malformed JSON: {err}") from None
    except RecursionError:
        raise HTTPException(400, "malformed JSON: nested too deeply") from None


async def _await_result(fut: asyncio.Future[dict[str, Any]], wait: float) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(asyncio.shield(fut), wait)
    except asyncio.TimeoutError:
        return None


def create_app(node: LedgerNode, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """Build the FastAPI app serving ``node``; its lifespan starts and stops the node.

    Parameters
    ----------
    node : LedgerNode
        The node (not yet started).
    max_body : int (default: 32 MiB)
        Largest request body accepted (413 beyond).

    Returns
    -------
    FastAPI
        The ASGI application.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.close()

    app = FastAPI(title="BCS-FL ledger node", version="0.1.0", lifespan=lifespan,
                  description=__doc__)
    app.add_middleware(_BodyLimit, limit=max_body)
    ledger = node.ledger

    @app.get("/health", tags=["node"])
    async def health() -> dict[str, Any]:
        """Liveness, chain height, PBFT view and recovery state of this node."""
        return node.health()

    @app.get("/node", tags=["node"])
    def node_info() -> dict[str, Any]:
        """This node's index and key, every node's key and HTTP URL."""
        return {"index": node.index, "nodes": node.n, "public": node.key.public_hex,
                "keys": list(node.keys), "peers": node.http_urls}

    @app.get("/getBlockchain", tags=["paper"])
    def get_blockchain(start: int = Query(0, ge=0, le=_MAX_SEQ),
                       end: int | None = Query(None, ge=0, le=_MAX_SEQ)) -> dict[str, Any]:
        """The chain (paper Table 1), genesis first; ``start``/``end`` select a range."""
        blocks = ledger.blocks(start, end)
        return {"chain": [b.to_json() for b in blocks], "height": ledger.height()}

    @app.get("/blocks/latest", tags=["chain"])
    def latest_block() -> dict[str, Any]:
        """The newest block."""
        return ledger.latest().to_json()

    @app.get("/blocks/{seq}", tags=["chain"], responses={404: {"description": "no such block"}})
    def get_block(seq: int = Path(ge=0, le=_MAX_SEQ)) -> dict[str, Any]:
        """The block with ``sequenceNo == seq``."""
        try:
            return ledger.block(seq).to_json()
        except KeyError:
            raise HTTPException(404, f"no block {seq} (height {ledger.height()})") from None

    @app.post("/blocks", tags=["chain"], openapi_extra=BLOCK_SCHEMA,
              responses={202: {"description": "pending"}, 409: {"description": "refused"}})
    async def post_block(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Append a pre-built, signed block through PBFT (``check_append`` on every node)."""
        obj = await _json_body(request)
        try:
            block = Block.from_json(obj)
            check_block(block)
        except LedgerError as err:
            raise HTTPException(422, str(err)) from None
        except RecursionError:
            raise HTTPException(422, "block data nested too deeply") from None
        return await _ordered(encode_block_op(block), wait)

    @app.get("/getLatestModel", tags=["paper"],
             responses={404: {"description": "no block carries a model yet"}})
    async def get_latest_model(include_bytes: bool = False) -> dict[str, Any]:
        """The newest block's global model (paper Table 1): metadata and a link."""
        seq = node.latest_model_seq
        if seq is None:
            raise HTTPException(404, "no block carries a model yet")
        block = ledger.block(seq)
        digest = block.data["model-params"]
        out: dict[str, Any] = {"sequenceNo": seq, "blockHash": block.hash,
                               "timestamp": block.timestamp, "round": block.data.get("round"),
                               "model": {"hash": digest, "url": f"/models/{digest}"}}
        if include_bytes:
            data = ledger.read_model_raw(digest)
            out["model"].update(size=len(data), bytes=base64.b64encode(data).decode("ascii"))
        return out

    @app.post("/postModelUpdate", tags=["paper"], openapi_extra=UPDATE_SCHEMA,
              responses={202: {"description": "accepted, not yet committed"},
                         403: {"description": "unknown client"},
                         429: {"description": "too many transactions pending"}})
    async def post_model_update(request: Request,
                                wait: float = Query(10.0, ge=0, le=120)) -> Any:
        """Submit signed transactions (paper Table 1); answered once committed.

        The body is one transaction or ``{"transactions": [...]}``. Each must come from
        a registered client key, reference a stored model (if any) and carry a valid
        hash and Ed25519 signature; this node checks all of that before forwarding.
        """
        obj = await _json_body(request)
        if isinstance(obj, list):
            items: Any = obj
        elif isinstance(obj, dict) and set(obj) == {"transactions"}:
            items = obj["transactions"]
        else:
            items = [obj]
        if not isinstance(items, list) or not items or len(items) > MAX_TXS_PER_REQUEST:
            raise HTTPException(422, f"expected 1..{MAX_TXS_PER_REQUEST} transactions")
        if len(node.batcher.outstanding) + len(items) > MAX_OUTSTANDING_TXS:
            raise HTTPException(429, "too many transactions waiting to commit; retry later")
        stored: dict[str, bool] = {}
        txs = [_checked_tx(i, item, stored) for i, item in enumerate(items)]
        ids = [tx.id for tx in txs]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "duplicate transaction ids in one request")
        node.stats["ingress_verified_txs"] += len(txs)
        wait_for = node.batcher.wait(ids)
        try:
            node.batcher.add([tx.to_json() for tx in txs], from_client=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(wait_for.future), wait)
        finally:
            node.batcher.forget(wait_for)
        body = {"committed": len(wait_for.where), "pending": sorted(wait_for.remaining),
                "blocks": sorted(set(wait_for.where.values()))}
        return JSONResponse(body, status_code=202 if wait_for.remaining else 200)

    def _checked_tx(i: int, item: Any, stored: dict[str, bool]) -> Transaction:
        try:
            tx = Transaction.from_json(item, copy=False)  # fresh from the body's parser
        except LedgerError as err:
            raise HTTPException(422, f"transaction {i}: {err}") from None
        except RecursionError:
            raise HTTPException(422, f"transaction {i}: data nested too deeply") from None
        if tx.public not in node.known_keys:
            raise HTTPException(403, f"transaction {tx.id}: unknown client key {tx.public[:16]}"
                                "...; register it with POST /identities")
        model = tx.data.get("model-params")
        if isinstance(model, str) and is_digest(model) and model not in stored:
            stored[model] = ledger.has_model(model)
        if isinstance(model, str) and is_digest(model) and not stored[model]:
            raise HTTPException(422, f"transaction {tx.id}: model {model} is not stored; "
                                "upload it with POST /models first")
        try:
            check_transaction(tx)
        except LedgerError as err:
            raise HTTPException(422, str(err)) from None
        return tx

    async def _ordered(value: str, wait: float) -> Any:
        try:  # the same checks every node runs, so a refusal comes with its reason now
            parse_op(value, node.cfg.max_model_bytes)
        except LedgerError as err:
            raise HTTPException(422, str(err)) from None
        result = await _await_result(node.submit(value, broadcast=True), wait)
        if result is None:
            return JSONResponse({"status": "pending", "detail": "not committed yet"}, 202)
        if not result.get("ok"):
            raise HTTPException(409, result.get("reason", "refused"))
        return result

    @app.get("/models", tags=["models"])
    def list_models() -> dict[str, list[str]]:
        """Digests of every stored model."""
        return {"models": ledger.model_digests()}

    @app.post("/models", tags=["models"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}})
    async def post_model(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Store model bytes (raw body) on every node; returns their SHA-256 key."""
        data = await request.body()
        if len(data) > node.cfg.max_model_bytes:
            raise HTTPException(413, f"model exceeds {node.cfg.max_model_bytes} bytes")
        digest = sha256_hex(data)
        if ledger.has_model(digest):
            return {"ok": True, "hash": digest, "size": len(data)}
        return await _ordered(encode_model_op(data), wait)

    @app.get("/models/{digest}", tags=["models"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}},
                        404: {"description": "not stored"}})
    def get_model(digest: str = Path(pattern=_HEX64)) -> Response:
        """The model bytes stored under ``digest``, as stored (clients check the hash)."""
        try:
            data = ledger.read_model_raw(digest)
        except KeyError:
            raise HTTPException(404, f"no model {digest}") from None
        return Response(data, media_type="application/octet-stream")

    @app.get("/identities", tags=["clients"])
    def identities() -> dict[str, Any]:
        """Every registered client: ``client_id -> {public_key, role, registered_at}``."""
        return ledger.identities()

    @app.get("/identities/{client_id}", tags=["clients"],
             responses={404: {"description": "unknown client"}})
    def identity(client_id: str) -> dict[str, Any]:
        """One client's registered key."""
        record = ledger.identities().get(client_id)
        if record is None:
            raise HTTPException(404, f"unknown client {client_id!r}")
        return {"client_id": client_id, **record}

    @app.post("/identities", tags=["clients"], responses={409: {"description": "other key"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": IdentityIn.model_json_schema()}}}})
    async def register(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Register a client key through PBFT (idempotent for the same key)."""
        try:
            body = IdentityIn.model_validate(await _json_body(request))
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                for e in err.errors())
            raise HTTPException(422, f"invalid identity: {reasons}") from None
        try:
            body.client_id.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(422, "client_id must be valid Unicode text") from None
        known = ledger.identity(body.client_id)
        if known == body.public_key:
            return {"ok": True, "client_id": body.client_id}
        if known is not None:
            raise HTTPException(409, f"{body.client_id!r} is registered with another key")
        return await _ordered(encode_identity_op(body.client_id, body.public_key, body.role),
                              wait)

    @app.get("/stakes", tags=["clients"])
    async def stakes() -> dict[str, Any]:
        """The stake book recorded in the newest block that has one."""
        seq = node.latest_model_seq
        block = ledger.block(seq) if seq is not None else None
        book = block.data.get("stakes") if block is not None else None
        return {"sequenceNo": seq if isinstance(book, dict) else None,
                "stakes": book if isinstance(book, dict) else {}}

    return app
