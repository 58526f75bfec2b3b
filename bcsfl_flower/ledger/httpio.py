"""HTTP plumbing of a ledger node: body size limits, strict JSON bodies, bounded waits, rate limits.

Kept apart from :mod:`~.service` (the endpoints) so that each stays readable.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from .block import LedgerError, parse_json

__all__ = ["AsciiJSONResponse", "BodyLimit", "RateLimiter", "TokenBucket", "await_result", "json_body",
           "retry_after"]


class AsciiJSONResponse(JSONResponse):
    """JSON as ASCII (non-ASCII escaped): a lone surrogate that strict JSON parsing lets
    into a stored block or id is served escaped, as it was sent, instead of failing to
    encode as UTF-8."""

    def render(self, content: Any) -> bytes:  # noqa: D102
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class BodyLimit:
    """ASGI middleware: 413 for a body over its limit (declared or streamed).

    ``limit`` is a number of bytes, or a function of the ASGI scope that returns the
    limit for that request and the reason to give beyond it (``None``: the default
    "request body exceeds N bytes"), so that a route can have its own bound.
    """

    def __init__(self, app: Any, limit: int | Callable[[dict[str, Any]], tuple[int, str | None]]) -> None:
        self.app = app
        self.limit = limit

    def _bound(self, scope: dict[str, Any]) -> tuple[int, str]:
        limit, reason = self.limit(scope) if callable(self.limit) else (self.limit, None)
        return limit, reason or f"request body exceeds {limit} bytes"

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, reason = self._bound(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reject(send, reason)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send, reason)

    @staticmethod
    async def _reject(send: Callable[[Any], Awaitable[None]], reason: str) -> None:
        body = json.dumps({"detail": reason}).encode()
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


class TokenBucket:
    """A token bucket, sans-IO: ``burst`` tokens, refilled at ``rate`` tokens per second.

    Time is passed in (``now``, seconds on any monotonic clock), so it is tested
    without sleeping. A bucket starts full.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.stamp = float(burst), now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refilled since the last call, at most ``burst``)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds from ``now`` until ``cost`` tokens are available (0.0: now)."""
        missing = cost - self.level(now)
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens if available: 0.0; else take nothing and return the seconds to wait."""
        wait = self.wait(now, cost)
        if wait == 0.0:
            self.tokens -= cost
        return wait


class RateLimiter:
    """One :class:`TokenBucket` per key (a client id, a key, an address), sans-IO.

    ``rate <= 0`` disables the limiter (every ``take`` succeeds). At most ``max_keys``
    buckets are kept: beyond that, full buckets (idle keys) are forgotten first, then
    the oldest.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, max(1.0, burst), max_keys
        self.buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether this limiter limits anything."""
        return self.rate > 0

    def take(self, keys: Iterable[str], now: float) -> float:
        """Charge one token to each of ``keys``, all or none: 0.0, or the seconds to wait."""
        if not self.enabled:
            return 0.0
        buckets = [self._bucket(k, now) for k in dict.fromkeys(keys)]
        wait = max((b.wait(now) for b in buckets), default=0.0)
        if wait == 0.0:
            for b in buckets:
                b.take(now)
        return wait

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._prune(now)
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self.buckets.items() if b.level(now) >= b.burst]:
            del self.buckets[key]
        while len(self.buckets) >= self.max_keys:
            del self.buckets[next(iter(self.buckets))]


def retry_after(wait: float) -> str:
    """The ``Retry-After`` header value (whole seconds, at least 1) for a wait of ``wait`` s."""
    return str(max(1, math.ceil(wait)))
