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
head), an id enrolled with another key, or an upload fewer than f+1 nodes would
stage, 413 too large, 422 wrong types or an invalid
hash, 429 too many transactions already waiting or too many writes from one client
(with ``Retry-After``). A write that has not committed within ``wait`` seconds gets 202
(pending), never a 5xx.

Quotas (:class:`Quotas`; set by ``create_app`` or ``BCSFL_LEDGER_*`` environment
variables): request bodies (model uploads up to the charter's ``max_model_bytes``, JSON
bodies up to ``max_json_body``), a block's and a transaction's ``data`` size, chain
reads paged (``GET /getBlockchain?from=&limit=``, ``page`` blocks by default, at most
``max_page``), and writes rate-limited per client: per enrolled identity that signs
them, per remote address for anything unauthenticated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import Refused, admit_block, admit_enrolment, admit_transaction
from .base import identity_records
from .block import Block, LedgerError, Transaction, canonical_json
from .httpio import AsciiJSONResponse as JSONResponse
from .httpio import BodyLimit, RateLimiter, await_result, json_body, retry_after
from .model_relay import STAGED
from .model_routes import add_model_routes
from .node import LedgerNode
from .ops import encode_block_op, parse_op
from .replay import enrolment_of
from .rules import check_block
from .schemas import BLOCK_SCHEMA, ENROLMENT_SCHEMA, UPDATE_SCHEMA

__all__ = ["Quotas", "create_app"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
MAX_TXS_PER_REQUEST = 20_000
#: Seconds a primary waits for the vouches it asked for before it batches its own clients'
#: transactions anyway (then some peers verify them themselves; nothing else changes).
VOUCH_WAIT = 0.5
MAX_OUTSTANDING_TXS = 200_000  # per node: beyond this, clients are told to back off (429)
_MAX_SEQ = 2**62  # SQLite integers are 64-bit


_ENV_PREFIX = "BCSFL_LEDGER_"


@dataclasses.dataclass(frozen=True)
class Quotas:
    """What one client may ask of a node: sizes, page lengths, write rates.

    Each field can be set by the environment variable ``BCSFL_LEDGER_<FIELD>`` (upper
    case, e.g. ``BCSFL_LEDGER_WRITE_RATE=5``), read by :meth:`from_env`.

    Parameters
    ----------
    max_json_body : int (default: 16 MiB)
        Largest JSON body (``/postModelUpdate``, ``/blocks``, ``/identities``): room for
        ``MAX_TXS_PER_REQUEST`` transactions. Model uploads (``POST /models``) are
        bounded by the charter's ``max_model_bytes`` instead; every body by
        ``create_app``'s ``max_body`` as well.
    max_block_data : int (default: 4 MiB)
        Largest ``data`` of a block posted to ``/blocks`` (canonical JSON bytes): 413.
    max_tx_data : int (default: 1 MiB)
        Largest ``data`` of one transaction posted to ``/postModelUpdate`` or
        ``/identities`` (canonical JSON bytes): 413.
    page : int (default: 100)
        Blocks per ``GET /getBlockchain`` answer when no ``limit`` is given.
    max_page : int (default: 1000)
        Largest ``limit`` of ``GET /getBlockchain``; a larger one is refused (422).
    write_rate, write_burst : float (default: 20 per second, 100)
        Token bucket per enrolled identity for signed writes (``X-Bcsfl-Client`` of a
        model upload, each transaction's public key, a block's signer): one token
        per request; 429 with ``Retry-After`` when empty. ``write_rate = 0``: unlimited.
    anon_rate, anon_burst : float (default: 20 per second, 200)
        Token bucket per remote address for writes that show no identity
        (``/identities``, and any write refused before its signer is known).
    """

    max_json_body: int = 16 * 1024 * 1024
    max_block_data: int = 4 * 1024 * 1024
    max_tx_data: int = 1024 * 1024
    page: int = 100
    max_page: int = 1000
    write_rate: float = 20.0
    write_burst: float = 100.0
    anon_rate: float = 20.0
    anon_burst: float = 200.0

    def __post_init__(self) -> None:
        if min(self.max_json_body, self.max_block_data, self.max_tx_data, self.page) < 1 \
                or self.max_page < self.page:
            raise ValueError(f"bad quotas: {self}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Quotas:
        """Defaults overridden by ``BCSFL_LEDGER_<FIELD>`` variables of ``env`` (default: os.environ)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(_ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip():
                kind = int if isinstance(f.default, int) else float
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{_ENV_PREFIX}{f.name.upper()}={raw!r}: not a number") from None
        return cls(**values)


def _data_size(data: Any) -> int | None:
    """Canonical JSON size of ``data``; None if it does not encode (the parser says why)."""
    try:
        return len(canonical_json(data))
    except (TypeError, ValueError, RecursionError):
        return None


def create_app(node: LedgerNode, max_body: int = DEFAULT_MAX_BODY,
               quotas: Quotas | None = None) -> FastAPI:
    """Build the FastAPI app serving ``node``; its lifespan starts and stops the node.

    Parameters
    ----------
    node : LedgerNode
        The node (not yet started).
    max_body : int (default: 32 MiB)
        Largest request body accepted (413 beyond), whatever the route.
    quotas : Quotas | None (default: None)
        Size, page and rate limits; None: :meth:`Quotas.from_env`.

    Returns
    -------
    FastAPI
        The ASGI application.
    """
    q = Quotas.from_env() if quotas is None else quotas
    by_identity = RateLimiter(q.write_rate, q.write_burst)
    by_address = RateLimiter(q.anon_rate, q.anon_burst)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.close()

    app = FastAPI(title="BCS-FL ledger node", version="0.2.0", lifespan=lifespan,
                  description=__doc__, default_response_class=JSONResponse)
    ledger = node.ledger

    def body_limit(scope: dict[str, Any]) -> tuple[int, str | None]:
        """Model uploads: the charter's max_model_bytes; other bodies: max_json_body; all: max_body."""
        if scope.get("method") != "POST":
            return max_body, None
        if scope.get("path") in ("/models", STAGED):
            model = node.chain.max_model_bytes
            if model < max_body:
                return model, f"model upload exceeds the charter's max_model_bytes ({model})"
            return max_body, None
        if q.max_json_body < max_body:
            return q.max_json_body, f"request body exceeds {q.max_json_body} bytes (max_json_body)"
        return max_body, None

    app.add_middleware(BodyLimit, limit=body_limit)

    def throttle(limiter: RateLimiter, keys: Iterable[str], who: str) -> None:
        """Charge one write to each of ``keys``; 429 with ``Retry-After`` if any has none left."""
        wait = limiter.take(keys, time.monotonic())
        if wait > 0:
            raise HTTPException(429, f"too many writes from {who}: retry in {wait:.1f}s",
                                headers={"Retry-After": retry_after(wait)})

    def address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def charge_address(request: Request) -> None:
        throttle(by_address, [address(request)], f"address {address(request)}")

    @contextlib.contextmanager
    def anonymous(request: Request) -> Iterator[None]:
        """A refusal raised inside (no signer known yet) is charged to the remote address."""
        try:
            yield
        except HTTPException as err:
            if err.status_code != 429:
                charge_address(request)  # raises 429 once this address is over its rate
            raise

    def check_tx_data(items: list[Any]) -> None:
        for i, item in enumerate(items):
            data = item.get("data") if isinstance(item, dict) else None
            size = _data_size(data) if data is not None else None
            if size is not None and size > q.max_tx_data:
                raise HTTPException(413, f"transaction {i}: data of {size} bytes exceeds "
                                         f"max_tx_data ({q.max_tx_data})")

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
    def get_blockchain(from_: int | None = Query(None, alias="from", ge=0, le=_MAX_SEQ,
                                                 description="first sequenceNo (default 0)"),
                       limit: int = Query(q.page, ge=1, le=q.max_page,
                                          description=f"blocks per page (default {q.page}, "
                                                      f"at most {q.max_page})"),
                       start: int = Query(0, ge=0, le=_MAX_SEQ, description="same as from"),
                       end: int | None = Query(None, ge=0, le=_MAX_SEQ,
                                               description="stop before this sequenceNo")) -> dict[str, Any]:
        """The chain (paper Table 1), genesis first, one page at a time.

        Blocks ``from <= sequenceNo < end``, at most ``limit`` of them; ``next`` is the
        ``from`` of the next page (null after the last). A ``limit`` above the node's
        maximum page is refused (422).
        """
        first = start if from_ is None else from_
        height = ledger.height()
        stop = min(height if end is None else end, first + limit)
        blocks = ledger.blocks(first, stop) if stop > first else []
        more = stop < (height if end is None else min(end, height))
        return {"chain": [b.to_json() for b in blocks], "height": height, "from": first,
                "limit": limit, "next": stop if more else None}

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
        with anonymous(request):
            obj = await json_body(request)
            data = obj.get("data") if isinstance(obj, dict) else None
            size = _data_size(data) if data is not None else None
            if size is not None and size > q.max_block_data:
                raise HTTPException(413, f"block data of {size} bytes exceeds max_block_data ({q.max_block_data})")
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
        throttle(by_identity, [block.public], f"block signer {block.public[:16]}")
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
        stored: dict[str, bool] = {}

        def has_model(digest: str) -> bool:
            if digest not in stored:
                stored[digest] = ledger.has_model(digest)
            return stored[digest]

        with anonymous(request):
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
                raise HTTPException(429, "too many transactions waiting to commit; retry later",
                                    headers={"Retry-After": "1"})
            check_tx_data(items)
            state, keys = node.chain.state, node.chain.known_keys
            try:
                txs = [admit_transaction(i, item, state, keys, has_model) for i, item in enumerate(items)]
            except Refused as err:
                raise HTTPException(err.status, err.detail) from None
        signers = sorted({tx.public for tx in txs})
        throttle(by_identity, signers, f"key {signers[0][:16]}" if len(signers) == 1
                 else f"one of {len(signers)} keys")
        ids = [tx.id for tx in txs]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "duplicate transaction ids in one request")
        node.stats["ingress_verified_txs"] += len(txs)
        asked = node.vouching.verified(txs)
        if asked is not None:  # the primary's own client: its helper's vouches first (vouch_driver)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(asked.future), VOUCH_WAIT)
            finally:
                node.vouching.forget(asked)
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

    add_model_routes(app, node, anonymous,
                     lambda keys, who: throttle(by_identity, keys, who), _ordered)

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
        charge_address(request)  # anyone may submit a ticket: charged to the address it comes from
        obj = await json_body(request)
        check_tx_data([obj])
        try:
            tx, new = admit_enrolment(obj, node.chain.state)
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
