"""The HTTP API of a ledger node (FastAPI), the paper's Table 1 plus what users need.

Reads are open and answered from the node's own SQLite file and its federation state
(chain and model reads in FastAPI's thread pool; the SQLite backend serialises
access). Every write needs the authority the chain grants (:mod:`~.admission`): an
enrolment signed by the charter's enrolment key, transactions and model uploads by
enrolled identities, blocks that follow from the state by the federation's rules.
Writes are ordered by PBFT and answered once this node has executed them. Every error
is a 4xx with a ``detail`` that says why: 400 malformed JSON, 401 no authority shown
(an unsigned enrolment, an upload without its signature headers), 403 authority
refused (not the enrolment authority, an unknown key, a bad signature, a block the
rules refuse), 404 not found, 409 refused on execution (e.g. a block built on a stale
head) or an id enrolled with another key, 413 too large, 422 wrong types or an invalid
hash, 429 too many transactions already waiting. A write that has not committed within
``wait`` seconds gets 202 (pending), never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bcsfl_flower.crypto import sha256_hex

from .admission import Refused, admit_block, admit_enrolment, admit_transaction
from .base import identity_records
from .block import Block, LedgerError, Transaction
from .httpio import AsciiJSONResponse as JSONResponse
from .httpio import BodyLimit, await_result, json_body
from .node import LedgerNode
from .ops import encode_block_op, encode_model_op, parse_op
from .replay import enrolment_of
from .rules import check_block
from .schemas import BLOCK_SCHEMA, ENROLMENT_SCHEMA, UPDATE_SCHEMA
from .upload import CLIENT_HEADER, SIGN_HEADER, UploadRefused, check_model_size, check_upload

__all__ = ["create_app"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_TXS_PER_REQUEST = 20_000
MAX_OUTSTANDING_TXS = 200_000  # per node: beyond this, clients are told to back off (429)
_HEX64 = r"^[0-9a-f]{64}$"
_MAX_SEQ = 2**62  # SQLite integers are 64-bit


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

    app = FastAPI(title="BCS-FL ledger node", version="0.2.0", lifespan=lifespan,
                  description=__doc__, default_response_class=JSONResponse)
    app.add_middleware(BodyLimit, limit=max_body)
    ledger = node.ledger

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        # The reason may quote what the client sent (a transaction id): served as ASCII JSON.
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

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
              responses={202: {"description": "pending"}, 403: {"description": "refused by the rules"},
                         409: {"description": "refused on execution"}})
    async def post_block(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Append a signed block through PBFT; it must follow from the chain by the federation's rules.

        Checked here first (structure, then a dry run of the rules against this node's
        state: 403 with the reason), and again by every node when it executes.
        """
        obj = await json_body(request)
        try:
            block = Block.from_json(obj)
            check_block(block)
        except LedgerError as err:
            raise HTTPException(422, str(err)) from None
        except RecursionError:
            raise HTTPException(422, "block data nested too deeply") from None
        try:
            admit_block(block, node.chain.head, node.chain.state)
        except Refused as err:
            raise HTTPException(err.status, err.detail) from None
        return await _ordered(encode_block_op(block), wait)

    @app.get("/getLatestModel", tags=["paper"],
             responses={404: {"description": "no block carries a model yet"}})
    async def get_latest_model(include_bytes: bool = False) -> dict[str, Any]:
        """The newest block's global model (paper Table 1): metadata and a link."""
        seq = node.chain.latest_model_seq
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
                         403: {"description": "not an enrolled key (or not the enrolment authority)"},
                         429: {"description": "too many transactions pending"}})
    async def post_model_update(request: Request,
                                wait: float = Query(10.0, ge=0, le=120)) -> Any:
        """Submit signed transactions (paper Table 1); answered once committed.

        The body is one transaction or ``{"transactions": [...]}``. Each must come from
        an enrolled identity's key (an enrolment: from the enrolment authority),
        reference a stored model (if any) and carry a valid hash and Ed25519 signature;
        this node checks all of that before forwarding.
        """
        obj = await json_body(request)
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

        def has_model(digest: str) -> bool:
            if digest not in stored:
                stored[digest] = ledger.has_model(digest)
            return stored[digest]

        state, keys = node.chain.state, node.chain.known_keys
        try:
            txs = [admit_transaction(i, item, state, keys, has_model) for i, item in enumerate(items)]
        except Refused as err:
            raise HTTPException(err.status, err.detail) from None
        ids = [tx.id for tx in txs]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "duplicate transaction ids in one request")
        node.stats["ingress_verified_txs"] += len(txs)
        where, pending = await _commit(txs, wait)
        body = {"committed": len(where), "pending": pending, "blocks": sorted(set(where.values()))}
        return JSONResponse(body, status_code=202 if pending else 200)

    async def _commit(txs: list[Transaction], wait: float) -> tuple[dict[str, int], list[str]]:
        """Hand ``txs`` to the batcher; wait up to ``wait`` s: ``(id -> block, pending ids)``."""
        wait_for = node.batcher.wait([tx.id for tx in txs])
        try:
            node.batcher.add([tx.to_json() for tx in txs], from_client=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(wait_for.future), wait)
        finally:
            node.batcher.forget(wait_for)
        return dict(wait_for.where), sorted(wait_for.remaining)

    async def _ordered(value: str, wait: float) -> Any:
        try:  # the same checks every node runs, so a refusal comes with its reason now
            parse_op(value, node.chain.max_model_bytes)
        except LedgerError as err:
            raise HTTPException(422, str(err)) from None
        result = await await_result(node.submit(value, broadcast=True), wait)
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
            "schema": {"type": "string", "format": "binary"}}}}},
        responses={401: {"description": "no upload signature"}, 403: {"description": "not enrolled"},
                   413: {"description": "over the charter's max_model_bytes"}})
    async def post_model(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Store model bytes (raw body) on every node; returns their SHA-256 key.

        The uploader is an enrolled identity: header ``X-Bcsfl-Client`` names it and
        ``X-Bcsfl-Sign`` is its Ed25519 signature (hex) over
        ``sha256(b"bcsfl-model|" + sha256_hex(body))``; every node checks it again.
        """
        data = await request.body()  # read in full: a refusal mid-upload would reset the connection
        digest = sha256_hex(data)
        client, sign = request.headers.get(CLIENT_HEADER), request.headers.get(SIGN_HEADER)
        try:
            check_upload(node.chain.state, client, sign, digest)
            check_model_size(node.chain.state, len(data))
        except UploadRefused as err:
            raise HTTPException(err.status, str(err)) from None
        if ledger.has_model(digest):
            return {"ok": True, "hash": digest, "size": len(data)}
        assert client is not None and sign is not None
        return await _ordered(encode_model_op(data, client, sign), wait)

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
        """Every enrolled identity: ``client_id -> {public_key, role, stake, taken_part, enrolled_at}``."""
        return identity_records(node.chain.state)

    @app.get("/identities/{client_id}", tags=["clients"],
             responses={404: {"description": "unknown client"}})
    def identity(client_id: str) -> dict[str, Any]:
        """One identity's enrolled key, role and stake."""
        record = identity_records(node.chain.state).get(client_id)
        if record is None:
            raise HTTPException(404, f"unknown client {client_id!r}")
        return {"client_id": client_id, **record}

    @app.post("/identities", tags=["clients"], openapi_extra=ENROLMENT_SCHEMA,
              responses={401: {"description": "unsigned"}, 403: {"description": "not the enrolment authority"},
                         409: {"description": "enrolled with another key"}})
    async def enrol(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Enrol an identity: the body is the enrolment authority's signed enrolment transaction.

        ``bcsfl ledger enrol --out TICKET.json`` writes one; anyone may submit it. It is
        ordered like any transaction and lands in a transaction block; idempotent for
        an identity already enrolled with the same key.
        """
        try:
            tx, new = admit_enrolment(await json_body(request), node.chain.state)
        except Refused as err:
            raise HTTPException(err.status, err.detail) from None
        cid = enrolment_of(tx)[0]
        if not new:
            return {"ok": True, "client_id": cid, "already": True}
        where, pending = await _commit([tx], wait)
        if pending:
            return JSONResponse({"status": "pending", "client_id": cid, "detail": "not committed yet"}, 202)
        return {"ok": True, "client_id": cid, "sequenceNo": where[tx.id]}

    @app.get("/stakes", tags=["clients"])
    def stakes() -> dict[str, Any]:
        """The stake book after the head: every enrolled client's stake, and the last certified round."""
        state = node.chain.state
        return {"sequenceNo": node.chain.latest_model_seq, "round": state.round, "stakes": state.stakes()}

    return app
