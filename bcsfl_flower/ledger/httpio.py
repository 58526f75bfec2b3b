"""HTTP plumbing of a ledger node: the body size limit, strict JSON bodies, bounded waits.

Kept apart from :mod:`~.service` (the endpoints) so that each stays readable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from .block import LedgerError, parse_json

__all__ = ["AsciiJSONResponse", "BodyLimit", "await_result", "json_body"]


class AsciiJSONResponse(JSONResponse):
    """JSON as ASCII (non-ASCII escaped): a lone surrogate that strict JSON parsing lets
    into a stored block or id is served escaped, as it was sent, instead of failing to
    encode as UTF-8."""

    def render(self, content: Any) -> bytes:  # noqa: D102
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class BodyLimit:
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


async def json_body(request: Request) -> Any:
    """The request body parsed as strict JSON; 400 with the reason if it is not."""
    raw = await request.body()
    if not raw:
        raise HTTPException(400, "empty body: expected JSON")
    try:
        return parse_json(raw)
    except LedgerError as err:
        raise HTTPException(400, f"malformed JSON: {err}") from None
    except RecursionError:
        raise HTTPException(400, "malformed JSON: nested too deeply") from None


async def await_result(fut: asyncio.Future[dict[str, Any]], wait: float) -> dict[str, Any] | None:
    """``fut``'s result, or None if it is not done within ``wait`` seconds (it keeps running)."""
    try:
        return await asyncio.wait_for(asyncio.shield(fut), wait)
    except asyncio.TimeoutError:
        return None
