"""The model routes of a ledger node's HTTP API: uploads, the staging hand-off between nodes, reads.

``POST /models`` takes an enrolled identity's signed upload. Its bytes never enter
consensus: the node stages them (:mod:`~.staging`), sends them to every peer's
``POST /staged`` (:mod:`~.model_relay`), which checks the same signature and answers
with a signed storage receipt (:mod:`~.receipts`), and orders only the digest, size,
uploader and f+1 receipts (:func:`~.ops.encode_model_op`). ``GET /staged/{digest}``
serves staged or stored bytes to a node that must execute that operation without
them. Kept apart from :mod:`~.service`, which builds the app and hands in its
rate limiter and its ordering helper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response

from bcsfl_flower.crypto import sha256_hex

from .model_relay import STAGED, collect_receipts
from .node import LedgerNode
from .ops import encode_model_op
from .receipts import make_receipt, needed
from .upload import CLIENT_HEADER, SIGN_HEADER, UploadRefused, check_model_size, check_upload

__all__ = ["add_model_routes"]

_HEX64 = r"^[0-9a-f]{64}$"


def add_model_routes(app: FastAPI, node: LedgerNode,
                     anonymous: Callable[[Request], AbstractContextManager[None]],
                     charge: Callable[[Iterable[str], str], None],
                     ordered: Callable[[str, float], Awaitable[Any]]) -> None:
    """Add ``GET/POST /models``, ``GET /models/{digest}`` and the nodes' ``/staged`` routes to ``app``.

    Parameters
    ----------
    app : FastAPI
        The node's app (:func:`~.service.create_app`).
    node : LedgerNode
        The node it serves.
    anonymous : Callable[[Request], AbstractContextManager[None]]
        Wraps checks made before the uploader is known: a refusal there is charged to
        the request's remote address.
    charge : Callable[[Iterable[str], str], None]
        Charges one write to each rate-limit key (429 when one has none left); the
        second argument names who for the message.
    ordered : Callable[[str, float], Awaitable[Any]]
        Orders an operation through PBFT and waits up to that many seconds for this
        node's result (the HTTP answer: the result, 202 pending, or 409 refused).
    """
    ledger = node.ledger

    async def stage(data: bytes, digest: str) -> None:
        """Stage an upload's bytes (off the event loop); 503 if this node's disk refuses them."""
        try:
            await asyncio.to_thread(node.staging.put, data, digest)
        except OSError as err:
            raise HTTPException(503, f"cannot stage model {digest} on node {node.index}: {err}") from None

    @app.get("/models", tags=["models"])
    def list_models() -> dict[str, list[str]]:
        """Digests of every stored model."""
        return {"models": ledger.model_digests()}

    def check_upload_request(request: Request, data: bytes) -> tuple[str, str, str]:
        """An upload's ``(digest, client, sign)`` once its signature, rate and size are checked (or 4xx)."""
        digest = sha256_hex(data)
        client, sign = request.headers.get(CLIENT_HEADER), request.headers.get(SIGN_HEADER)
        with anonymous(request):
            try:
                check_upload(node.chain.state, client, sign, digest)
            except UploadRefused as err:
                raise HTTPException(err.status, str(err)) from None
        assert client is not None and sign is not None
        charge([f"client:{client}"], f"client {client[:64]!r}")
        try:
            check_model_size(node.chain.state, len(data))
        except UploadRefused as err:
            raise HTTPException(err.status, str(err)) from None
        return digest, client, sign

    @app.post("/models", tags=["models"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}},
        responses={401: {"description": "no upload signature"}, 403: {"description": "not enrolled"},
                   409: {"description": "fewer than f+1 nodes staged it"},
                   503: {"description": "this node cannot stage it (its disk)"},
                   413: {"description": "over the charter's max_model_bytes"}})
    async def post_model(request: Request, wait: float = Query(30.0, ge=0, le=120)) -> Any:
        """Store model bytes (raw body) on every node; returns their SHA-256 key.

        The uploader is an enrolled identity: header ``X-Bcsfl-Client`` names it and
        ``X-Bcsfl-Sign`` is its Ed25519 signature (hex) over
        ``sha256(b"bcsfl-model|" + sha256_hex(body))``; every node checks it again. The
        bytes never enter consensus: this node stages them, sends them to every peer's
        ``POST /staged``, and orders only their digest and size with f+1 nodes' signed
        receipts that they hold them; a node that lacks them when it executes that
        fetches them from a signer.
        """
        data = await request.body()  # read in full: a refusal mid-upload would reset the connection
        digest, client, sign = check_upload_request(request, data)
        if ledger.has_model(digest):
            return {"ok": True, "hash": digest, "size": len(data)}
        await stage(data, digest)
        receipts, why = await collect_receipts(node.index, node.key, node.keys, node.http_urls, data, digest,
                                               client, sign)
        if len(receipts) < needed(node.n):
            raise HTTPException(409, f"model {digest}: {len(receipts)} of the {needed(node.n)} (f+1) nodes "
                                     f"needed staged it: " + "; ".join(why)[:1000])
        return await ordered(encode_model_op(digest, len(data), client, sign, receipts), wait)

    @app.post(STAGED, tags=["models"], include_in_schema=False)
    async def stage_model(request: Request) -> Any:
        """A peer's copy of an upload (the uploader's headers, checked again here): this node
        stages the bytes and answers with its receipt (:mod:`~.receipts`)."""
        data = await request.body()
        digest, _client, _sign = check_upload_request(request, data)
        if not ledger.has_model(digest):
            await stage(data, digest)
        return {"hash": digest, "size": len(data),
                "receipt": make_receipt(node.index, node.key, digest, len(data))}

    @app.get(STAGED + "/{digest}", tags=["models"], response_class=Response, include_in_schema=False)
    def get_staged(digest: str = Path(pattern=_HEX64)) -> Response:
        """Model bytes this node holds, staged or stored (a peer fetching what it must execute)."""
        data = node.staging.get(digest)
        if data is None:
            try:
                data = ledger.read_model_raw(digest)
            except KeyError:
                raise HTTPException(404, f"model {digest} is neither staged nor stored here") from None
        return Response(data, media_type="application/octet-stream")

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
